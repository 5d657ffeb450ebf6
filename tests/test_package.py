"""The package stands alone: a wheel installed into a fresh environment searches and retrains from
any directory, with no repository around it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(argv: list, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_wheel_installed_elsewhere_searches_and_retrains(tmp_path, tiny_dir):
    # Built from a copy: setuptools writes build/ and *.egg-info into the source it builds.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source])
    (wheel,) = tmp_path.glob("nas-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    # The test environment's dependencies (torch, optuna, ...), listed as a plain path: its .pth
    # files, among them the editable install of this repository, are not read.
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel])

    work = tmp_path / "work"
    work.mkdir()
    assert str(site) in run([python, "-c", "import nas; print(nas.__file__)"], cwd=work)
    # The packaged default space; budgets raised so both trials train on the tiny data set.
    run([python, "-m", "nas.search", "--trials", "2", "--trial-epochs", "1", "--max-params", "100000",
         "--max-macs", "100000000", "--data-dir", tiny_dir, "--val-size", "300", "--jobs", "1"], cwd=work)  # fmt: skip
    run([python, "-m", "nas.retrain", "runs/mnist_20k/best.json", "--epochs", "1", "--processes", "1"], cwd=work)
    assert {"best.json", "model.pt2", "metrics.json", "test_model.py"} <= {
        p.name for p in (work / "runs" / "mnist_20k").iterdir()
    }
