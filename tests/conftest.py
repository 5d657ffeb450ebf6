"""Shared fixtures: a tiny MNIST-format dataset on disk and in memory, built from the bundled copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from nas.data import BUNDLED_MNIST, FILE_STEMS, IMAGES_MAGIC, LABELS_MAGIC, load_dataset, read_idx


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> Path:
    """Write a uint8 tensor as an IDX file (gzipped unless told otherwise)."""
    magic = IMAGES_MAGIC if array.dim() == 3 else LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.contiguous().numpy().tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def write_subset(directory: Path, n_train: int, n_test: int) -> Path:
    """The first images of the real MNIST files, as a small MNIST-format directory."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "test": n_test}
    for key, stem in FILE_STEMS.items():
        tensor = read_idx(BUNDLED_MNIST / f"{stem}.gz")
        write_idx(directory / stem, tensor[: sizes[key.split("_")[0]]])
    return directory


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 training and 300 test images: enough for a trial to learn something, in a second."""
    return write_subset(tmp_path_factory.mktemp("tiny_mnist"), 1200, 300)


@pytest.fixture(scope="session")
def tiny_data(tiny_dir: Path):
    return load_dataset(tiny_dir, val_size=300, seed=0)


@pytest.fixture(autouse=True)
def single_thread():
    """Tests run beside each other on 2 cores; one torch thread each keeps them predictable."""
    torch.set_num_threads(1)


TINY_SPACE = """
[budget]
max_params = 20_000

[architecture]
stages = [2]
blocks_per_stage = [1, 2]
widths = [4, 8]
transitions = [0, 4]
dropout = [0.0, 0.1]
heads = ["gap", "gap_fc"]

[training]
max_lr = [0.05, 0.2]
batch_size = 64
weight_decay = 5e-4

[trial]
epochs = 1
reports_per_epoch = 2
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    """A space whose every candidate fits the budget and trains in a fraction of a second."""
    path = tmp_path / "tiny_space.toml"
    path.write_text(TINY_SPACE)
    return path
