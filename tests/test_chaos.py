"""Processes killed at random moments, with a CPU hog on the other core: nothing hangs, nothing is lost.

A training replica killed anywhere (starting, training, evaluating) ends its retrain with one line
and exit 1, well within the replicas' timeout, and no process is left behind. A search worker
killed anywhere loses no completed trial, leaves none RUNNING, and the journal stays readable. A
ranking's retrain job killed ends the ranking at once with one line, its other job ended too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from optuna.trial import TrialState

from nas.train import REPLICA_TIMEOUT_SECONDS
from tests.helpers import best_json, slow_ranking, tiny_study
from tests.test_interrupts import live_processes_in_group, start_search, trials

# Seconds from a replica's start to its kill: spawning and importing, meeting the first replica
# (that window also has a deterministic test in test_train.py), training, evaluating.
KILL_MOMENTS = (0.0, 0.9, 1.8, 2.7, 3.6)


@contextmanager
def cpu_hog() -> Iterator[None]:
    """One busy process: the other core of a 2-core machine is taken, as on a loaded laptop or runner."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def spawned_children(pid: int) -> list[int]:
    """Linux: the multiprocessing children of `pid` that run our code (not its resource tracker)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if ppid == pid and b"spawn_main" in cmdline:
            children.append(int(stat.parent.name))
    return children


def wait_for_children(pid: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := spawned_children(pid):
            return found
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no worker within {timeout} s")


@pytest.mark.slow
@pytest.mark.timeout(len(KILL_MOMENTS) * (REPLICA_TIMEOUT_SECONDS + 60))
def test_a_replica_killed_at_any_moment_ends_the_retrain_with_one_line(tiny_dir, tmp_path):
    argv = [sys.executable, "-m", "nas.retrain", str(best_json(tmp_path, tiny_dir)), "--epochs", "200",
            "--processes", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    outcomes = []
    with cpu_hog():
        for moment in KILL_MOMENTS:
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)  # fmt: skip
            (replica,) = wait_for_children(process.pid)
            time.sleep(moment)
            os.kill(replica, signal.SIGKILL)
            killed = time.monotonic()
            _, err = process.communicate(timeout=REPLICA_TIMEOUT_SECONDS + 30)
            outcomes.append((process.returncode, err.strip(), round(time.monotonic() - killed, 1)))
            time.sleep(1)  # the resource tracker exits when its parent has
            assert live_processes_in_group(process.pid) == [], "a process outlived the retrain"
    for code, err, _ in outcomes:
        assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, outcomes
        assert "No model was written" in err
    assert not (tmp_path / "out" / "model.pt2").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_workers_killed_at_any_moment_lose_no_completed_trial(tiny_dir, tiny_space, tmp_path):
    rng = random.Random(1)
    completed: dict[int, float] = {}
    with cpu_hog():
        for _ in range(3):
            process = start_search(tiny_dir, tiny_space, tmp_path, trials=8, jobs=2)
            for worker in wait_for_children(process.pid):
                time.sleep(rng.uniform(0.5, 6))
                os.kill(worker, signal.SIGKILL)
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            assert "Traceback" not in err
            found = trials(tmp_path)  # the journal reads
            assert {t.number: t.value for t in found if t.number in completed} == completed
            assert not [t for t in found if t.state == TrialState.RUNNING]
            completed = {t.number: t.value for t in found if t.state == TrialState.COMPLETE}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_ranking_job_killed_ends_the_ranking_at_once_with_one_line(tiny_dir, tiny_space, tmp_path):
    argv = slow_ranking(tiny_study(tiny_dir, tiny_space, tmp_path / "study"))
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(jobs := spawned_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(jobs) == 2, "the ranking did not start two retrain jobs"
    time.sleep(1)
    os.kill(jobs[0], signal.SIGKILL)
    killed = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - killed < 10  # not after the other job's 500 epochs
    assert process.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "was killed (signal 9" in err and "run the command again" in err
    time.sleep(1)  # the resource tracker exits when its parent has
    assert live_processes_in_group(process.pid) == [], "a retrain job outlived the ranking"
