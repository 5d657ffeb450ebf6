"""optuna-dashboard shows a study made by a search: checked in the page headless Chromium renders."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from nas.objective import Objective
from nas.search import TrialSlots, run_trials
from nas.space import load_space
from nas.study import make_storage
from nas.train import Report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DASHBOARD = Path(sys.executable).with_name("optuna-dashboard")
# Flags that keep Chromium off the network it cannot reach here, as root, without a screen.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def fake_train(model, data, config, on_report):
    """Reports an accuracy that grows with the model's size, so trials differ, without training."""
    accuracy = 90 + sum(p.numel() for p in model.parameters()) / 4000
    reports = [Report(step, step / 2, accuracy, 0.1, 0.1, accuracy, 0.01, 0.0) for step in (1, 2, 3, 4)]
    for report in reports:
        on_report(report)
    return reports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser_tools():
    missing = [name for name, path in (("chromium", CHROMIUM), ("optuna-dashboard", DASHBOARD.exists())) if not path]
    if missing:
        message = f"{', '.join(missing)} not installed (pip install -e '.[dev]'; apt-get install chromium)"
        if os.environ.get("NAS_REQUIRE_BROWSER"):  # CI sets it: a missing browser must fail, not skip
            pytest.fail(message)
        pytest.skip(message)


def test_dashboard_renders_the_study_and_its_trials(browser_tools, tiny_data, tiny_space, tmp_path):
    journal = tmp_path / "study.journal"
    study = optuna.create_study(
        study_name="dashboard-check", storage=make_storage(str(journal)), direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
    )  # fmt: skip
    run_trials(study, Objective(load_space(tiny_space), tiny_data, seed=0, train_fn=fake_train), TrialSlots(6).claim)
    completed = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert completed

    port = free_port()
    server = subprocess.Popen([str(DASHBOARD), "--host", "127.0.0.1", "--port", str(port), str(journal)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        page = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000",
             "--dump-dom", f"http://127.0.0.1:{port}/dashboard/studies/0"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", " ", page, flags=re.S)))
    assert "dashboard-check" in text
    assert f"Best Trial (number={study.best_trial.number})" in text
    missing = [n for n in completed if f"trial #{n}" not in text]  # each trial's learning curve
    assert not missing, text[-3000:]
