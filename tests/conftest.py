"""Shared fixtures: a tiny MNIST-format dataset on disk and in memory, built from the bundled copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nas import machine
from nas.data import load_dataset
from tests.helpers import TINY_SPACE, fake_profile, write_subset


@pytest.fixture(scope="session", autouse=True)
def machine_profile(tmp_path_factory: pytest.TempPathFactory):
    """A cached profile in a private cache (fp32, one process), so no test times this machine by accident.

    Set in the environment, so the commands the tests run as subprocesses read it too;
    tests/test_machine.py times the real settings.
    """
    previous = os.environ.get("NAS_CACHE_DIR")
    os.environ["NAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("nas_cache"))
    machine.save(fake_profile(fp32=2000, bf16=500, one_process=2000, two_processes=1500))
    yield
    if previous is None:
        del os.environ["NAS_CACHE_DIR"]
    else:
        os.environ["NAS_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 training and 300 test images: enough for a trial to learn something, in a second."""
    return write_subset(tmp_path_factory.mktemp("tiny_mnist"), 1200, 300)


@pytest.fixture(scope="session")
def tiny_data(tiny_dir: Path):
    return load_dataset(tiny_dir, val_size=300, seed=0)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny batches gain nothing from a second thread, and results stay the same on any machine."""
    torch.set_num_threads(1)


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """A space whose every candidate fits the budget and trains in a fraction of a second."""
    path = tmp_path / "tiny_space.toml"
    path.write_text(TINY_SPACE)
    return path
