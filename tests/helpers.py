"""Helpers shared by the tests: tiny MNIST-format files, a tiny search space, random genomes."""

from __future__ import annotations

import contextlib
import gzip
import sys
from pathlib import Path

import optuna
import torch

from nas import machine
from nas.best import Best, DataSplit
from nas.data import BUNDLED_MNIST, FILE_STEMS, IMAGES_MAGIC, LABELS_MAGIC, read_idx
from nas.genome import Block, Genome
from nas.objective import sample_genome
from nas.search import main as search_main
from nas.space import SPACES_DIR, load_space
from nas.train import Recipe


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


def random_genomes(space_file: str, n: int, seed: int = 0) -> list[Genome]:
    """Genomes drawn uniformly from a shipped search space, as a search would draw them (networks only)."""
    space = load_space(SPACES_DIR / space_file)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    genomes: list[Genome] = []
    while len(genomes) < n:
        with contextlib.suppress(ValueError):  # a draw whose valid convs shrink the map away
            genomes.append(sample_genome(study.ask(), space.architecture))
    return genomes


TINY_SPACE = """
[budget]
max_params = 20_000

[architecture]
stages = [2]
blocks_per_stage = [1, 2]
widths = [4, 8]
kernels = [3, 1]
padding = ["same", "valid"]
dropout = [0.0, 0.1]
heads = ["gap", "gap_fc"]

[training]
max_lr = [0.05, 0.2]
batch_size = 64
weight_decay = [1e-4, 5e-4]
augment_degrees = [0.0, 7.0]

[trial]
epochs = 1
reports_per_epoch = 2
"""


TINY_GENOME = Genome(
    stages=((Block(8), Block(8, padded=False)), (Block(8, kernel=1), Block(12))), dropout=0.05, head="gap"
)


def tiny_study(tiny_dir: Path, space: Path, out: Path) -> Path:
    """A finished 4-trial search of `space` on the tiny data set (one worker, no known designs): its best.json."""
    args = ["--trials", "4", "--space", str(space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(out), "--study", "tiny", "--jobs", "1", "--no-known-designs"]  # fmt: skip
    assert search_main(args) == 0
    return out / "best.json"


def slow_ranking(best: Path) -> list[str]:
    """The command line of a ranking of `best`'s study, two 500-epoch retrain jobs at once: long
    enough on the tiny data set to kill or interrupt them mid-training."""
    return [sys.executable, "-m", "nas.rank", str(best), "--retrains", "3", "--epochs", "500", "--jobs", "2"]


def best_json(tmp_path: Path, tiny_dir: Path, genome: Genome = TINY_GENOME, max_params: int = 20_000) -> Path:
    """A best.json as nas.search writes it, for a chosen genome, on the tiny data set."""
    winner = Best(
        genome,
        max_params,
        Recipe(max_lr=0.1, batch_size=64, weight_decay=5e-4, augment_degrees=7.0),
        DataSplit(str(tiny_dir), 300, 0),
    )
    path = tmp_path / "best.json"
    winner.write(path)
    return path


def fake_profile(fp32: float, bf16: float, one_process: float, two_processes: float | None) -> machine.Profile:
    """This CPU's profile as if measured so: channels_last 10% faster than contiguous, the split timed
    in fp32 (no split on one core: `two_processes` None).
    """
    rates = [
        machine.Rate(machine.Setting(precision, layout, 1), 1, rate * (1.1 if layout else 1.0))
        for precision, rate in (("fp32", fp32), ("bf16", bf16))
        for layout in (True, False)
    ]
    if two_processes is not None:
        rates += [
            machine.Rate(machine.Setting("fp32", True, n), 2, rate)
            for n, rate in ((1, one_process), (2, two_processes))
        ]
    return machine.Profile(machine.this_cpu(), torch.__version__, tuple(rates), machine.TrainerStep(1.25, 0.002))
