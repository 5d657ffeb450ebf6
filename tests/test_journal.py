"""A study journal torn by a crash mid-write: repaired before it is opened, every complete record kept."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from nas.journal import repair, split_torn
from nas.search import main


def journal_study(path, n_trials: int) -> None:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=n_trials)


def load(path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name="s", storage=storage)


@pytest.fixture
def whole(tmp_path) -> bytes:
    path = tmp_path / "whole.journal"
    journal_study(path, 4)
    return path.read_bytes()


def test_a_whole_journal_is_left_alone(tmp_path, whole):
    path = tmp_path / "study.journal"
    path.write_bytes(whole)
    assert repair(path) is None
    assert path.read_bytes() == whole and list(tmp_path.glob("*.torn-*")) == []


def test_a_tail_torn_at_any_offset_is_moved_aside_and_the_study_reads_again(tmp_path, whole):
    records = whole.split(b"\n")[:-1]
    last_start = len(whole) - len(records[-1]) - 1
    offsets = sorted({last_start + 1, last_start + 2, len(whole) - 2, len(whole) - 1, *range(1, len(whole), 97)})
    for offset in offsets:
        directory = tmp_path / str(offset)
        directory.mkdir()
        path = directory / "study.journal"
        path.write_bytes(whole[:offset])
        complete = whole[: whole.rfind(b"\n", 0, offset) + 1]
        line = repair(path)
        assert (line is None) == (complete == whole[:offset])
        assert path.read_bytes() == complete
        if line:
            (backup,) = directory.glob("study.journal.torn-*")
            assert backup.read_bytes() == whole[len(complete) : offset] and "\n" not in line
        if complete:
            assert len(load(path).trials) <= 4  # Optuna reads the repaired file


def test_a_torn_record_with_a_later_append_after_it_keeps_the_later_record():
    whole = b'{"op_code":0,"a":1}\n{"op_code":4,"b":2}\n'
    torn = b'{"op_code":5,"wor'
    damaged = whole[:20] + torn + whole[20:]
    assert split_torn(damaged) == (whole, torn)


def test_a_search_resumes_a_torn_study_and_says_so_in_one_line(tiny_dir, tiny_space, tmp_path, capsys):
    argv = ["--trials", "2", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1"]  # fmt: skip
    assert main(argv) == 0
    path = tmp_path / "study.journal"
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"op_code":6,"worker_id":"x","trial_id":1,"us')  # a record cut short
    capsys.readouterr()
    assert main(argv) == 0
    assert "torn records" in capsys.readouterr().out
    assert main(argv) == 0  # and again: the journal stayed readable
    trials = load(path).trials
    assert len(trials) == 6 and all(t.state != TrialState.RUNNING for t in trials)
    assert [json.loads(line)["op_code"] for line in path.read_bytes().splitlines()]  # every line parses
