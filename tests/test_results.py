"""The records' shared helpers."""

from __future__ import annotations

import pytest

from nas import results


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/repo/nas/rank.py", "best.json", "--trials", "2", "6"], "python -m nas.rank best.json --trials 2 6"),
        (["/venv/bin/nas-retrain", "my best.json"], "nas-retrain 'my best.json'"),
        (["/repo/nas/search.py"], "python -m nas.search"),
    ],
)
def test_the_command_line_names_the_command_that_runs(argv, expected, monkeypatch):
    """nas.rank's retrains once recorded `python -m nas.retrain` with nas.rank's arguments."""
    monkeypatch.setattr("sys.argv", argv)
    assert results.command_line() == expected
