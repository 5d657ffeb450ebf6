"""A search killed or interrupted mid-trial loses nothing and resumes; an interrupted retrain or
ranking stops cleanly."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas.trials import TrialRecord


def ctrl_c_as_in_a_terminal() -> None:
    """In a child, before it runs: SIGINT raises KeyboardInterrupt, as when typed in a terminal. A shell
    starts background jobs with SIGINT ignored, and Python keeps that, so without this the Ctrl-C
    tests fail whenever pytest runs in the background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def killed_at_the_end(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """A test that fails leaves no process behind to slow the tests after it (the children die with it)."""
    try:
        yield process
    finally:
        process.kill()
        process.communicate()


def start_search(tiny_dir: Path, space: Path, out: Path, trials: int, jobs: int = 1) -> subprocess.Popen:
    # 15 epochs on the tiny set: a few seconds a trial, long enough to interrupt one mid-run.
    argv = [sys.executable, "-m", "nas.search", "--trials", str(trials), "--trial-epochs", "15",
            "--space", str(space), "--data-dir", str(tiny_dir), "--val-size", "300", "--out", str(out),
            "--study", "s", "--jobs", str(jobs), "--pruner", "none"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip


def trials(out: Path) -> list:
    journal = out / "study.journal"
    if not journal.exists():
        return []
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="s", storage=storage).trials
    except KeyError:
        return []


def wait_for_a_running_trial_after_a_completed_one(out: Path, timeout: float = 120) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = trials(out)
        states = [t.state for t in found]
        if TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING and found[-1].intermediate_values:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no running trial after a completed one within {timeout} s")


def test_kill_9_mid_trial_then_rerun_keeps_completed_and_fails_the_interrupted(tiny_dir, tiny_space, tmp_path):
    process = start_search(tiny_dir, tiny_space, tmp_path, trials=20)
    before = wait_for_a_running_trial_after_a_completed_one(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1.0)  # the worker dies with its parent (PR_SET_PDEATHSIG)
    interrupted = before[-1].number
    completed = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}

    rerun = start_search(tiny_dir, tiny_space, tmp_path, trials=1)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    after = {t.number: t for t in trials(tmp_path)}
    assert {n: after[n].value for n in completed} == completed
    assert after[interrupted].state == TrialState.FAIL
    assert TrialRecord.of(after[interrupted]).fail_reason == "worker died"
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    assert len(after) == len(before) + 1
    assert (tmp_path / "best.json").exists()


def test_ctrl_c_records_the_trial_writes_best_json_and_exits_130(tiny_dir, tiny_space, tmp_path):
    with killed_at_the_end(start_search(tiny_dir, tiny_space, tmp_path, trials=20)) as process:
        running = wait_for_a_running_trial_after_a_completed_one(tmp_path)[-1].number
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    message = err.strip().splitlines()
    assert len(message) == 1 and "Resume with: python -m nas.search" in message[0] and "Traceback" not in err
    interrupted = next(t for t in trials(tmp_path) if t.number == running)
    assert TrialRecord.of(interrupted).fail_reason == "interrupted"
    assert (tmp_path / "best.json").exists()


def test_ctrl_c_stops_a_retrain_and_its_replicas_with_one_line(tiny_dir, tmp_path):
    from tests.helpers import best_json

    argv = [sys.executable, "-m", "nas.retrain", str(best_json(tmp_path, tiny_dir)), "--epochs", "200",
            "--processes", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    # A terminal's Ctrl-C signals the whole foreground process group: the retrain and its replica.
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip
    with killed_at_the_end(process):
        for line in process.stdout:
            if line.startswith("epoch  2/"):
                break
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    message = err.strip().splitlines()
    assert len(message) == 1 and "Run again with: python -m nas.retrain" in message[0] and "Traceback" not in err
    assert not (tmp_path / "out" / "model.pt2").exists()
    time.sleep(1)
    assert live_processes_in_group(process.pid) == [], "a training replica outlived the interrupted retrain"


def live_processes_in_group(pgid: int) -> list[int]:
    """Linux: processes of a process group that have not exited (zombies wait for a reaper, and do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited while we looked
        if int(group) == pgid and state != "Z":
            live.append(int(stat.parent.name))
    return live


def test_ctrl_c_stops_a_ranking_and_its_retrain_jobs_with_one_line(tiny_dir, tiny_space, tmp_path):
    from tests.helpers import slow_ranking, tiny_study

    argv = slow_ranking(tiny_study(tiny_dir, tiny_space, tmp_path / "study"))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=ctrl_c_as_in_a_terminal)  # fmt: skip
    with killed_at_the_end(process):
        started = 0
        for line in process.stdout:
            started += "retraining on the training split" in line
            if started == 2:
                break
        time.sleep(0.2)  # the second job still starting: it must not print a traceback either
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    message = err.strip().splitlines()
    assert len(message) == 1 and "finished retrains stay in" in message[0] and "Traceback" not in err, err
    time.sleep(1)
    assert live_processes_in_group(process.pid) == [], "a retrain job outlived the interrupted ranking"
