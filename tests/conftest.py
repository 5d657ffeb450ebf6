"""Shared fixtures: a tiny MNIST-format dataset on disk and in memory, built from the bundled copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.data import load_dataset
from tests.helpers import TINY_SPACE, write_subset


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
