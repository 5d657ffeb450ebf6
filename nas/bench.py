"""Benchmark: the project's trainer against a seed-style PyTorch loop, and search throughput by --jobs.

    python -m nas.bench                # about 12 minutes on a 2-core AVX2 CPU, 4 with AVX-512-BF16
    python -m nas.bench --quick        # smaller workloads, for a smoke run

Everything is measured in one run on one machine, so the ratios compare like with like. The
run first re-times the trainer's settings on this CPU (nas.machine), prints them all with the
one chosen, and refreshes the cached choice the trainer uses.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from nas import machine, results
from nas.data import Dataset, Split, load_dataset
from nas.errors import ArgumentParser, cli
from nas.machine import Setting
from nas.model import Normalize
from nas.processes import threads_per_process
from nas.report import count_states, records
from nas.search import SearchOptions, search
from nas.train import TrainConfig, evaluate, train


def seed_004_net(dropout: float = 0.1) -> nn.Sequential:
    """Seed 004's network, rebuilt from its torchsummary table (9,274 parameters).

    Its README does not give the dropout rate; 0.1 is assumed. The baseline lives here, not in
    the search space, because its conv-ReLU-BN order and unpadded tail are not genome features.
    """

    def block(c_in: int, c_out: int, padding: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=padding), nn.ReLU(), nn.BatchNorm2d(c_out)]

    return nn.Sequential(
        *block(1, 4), *block(4, 4), *block(4, 8), nn.Dropout(dropout), nn.MaxPool2d(2),
        *block(8, 12), *block(12, 12), *block(12, 16), nn.MaxPool2d(2),
        *block(16, 20, padding=0), nn.Conv2d(20, 10, 3), nn.AvgPool2d(3), nn.Flatten(),
    )  # fmt: skip


class PilMnist(torch.utils.data.Dataset):
    """What the seeds do: one PIL image per item, converted and normalised by torchvision transforms."""

    def __init__(self, split: Split, transform: transforms.Compose) -> None:
        self.pixels = split.images.squeeze(1).numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.pixels[index], mode="L")), self.labels[index]


def seed_style_epoch(data: Dataset, warmup_batches: int) -> dict:
    """One epoch as the seeds train: PIL Dataset, DataLoader at batch 128, Adam at 0.01."""
    torch.manual_seed(0)
    model = seed_004_net()
    normalise = transforms.Normalize((data.mean,), (data.std,))
    train_set = PilMnist(
        data.train, transforms.Compose([transforms.RandomRotation(7.0), transforms.ToTensor(), normalise])
    )
    loader = DataLoader(train_set, batch_size=128, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    timed_samples, start = 0, None
    for batch, (x, y) in enumerate(loader):
        if batch == warmup_batches:
            start, timed_samples = time.perf_counter(), 0
        loss = F.nll_loss(F.log_softmax(model(x), dim=1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timed_samples += len(y)
    train_rate = timed_samples / (time.perf_counter() - start)

    start, correct = time.perf_counter(), 0
    model.eval()
    with torch.no_grad():
        for x, y in DataLoader(PilMnist(data.val, transforms.Compose([transforms.ToTensor(), normalise])), 1000):
            correct += (model(x).argmax(1) == y).sum().item()
    return {
        "train_samples_per_s": train_rate,
        "eval_samples_per_s": len(data.val) / (time.perf_counter() - start),
        "val_accuracy_1_epoch": 100.0 * correct / len(data.val),
    }


def trainer_epoch(data: Dataset, warmup_batches: int, setting: Setting) -> dict:
    """One epoch of the same network with the project's trainer, its default recipe, and `setting`."""
    torch.manual_seed(0)
    model = nn.Sequential(Normalize(data.mean, data.std), seed_004_net())
    config = TrainConfig(epochs=1, seed=0, **dataclasses.asdict(setting))
    marks: dict[str, float] = {}

    def on_step(epoch: int, step: int, steps: int) -> None:
        if step == warmup_batches:
            marks["start"] = time.perf_counter()
        if step == steps:
            marks["end"] = time.perf_counter()

    # Validation at the epoch's end is timed separately below, so train() validates on one image.
    train(model, dataclasses.replace(data, val=Split(data.val.images[:1], data.val.labels[:1])), config,
          on_step=on_step)  # fmt: skip
    timed = len(data.train) - warmup_batches * config.batch_size
    start = time.perf_counter()
    _, accuracy = evaluate(model, data.val)
    return {
        "train_samples_per_s": timed / (marks["end"] - marks["start"]),
        "eval_samples_per_s": len(data.val) / (time.perf_counter() - start),
        "val_accuracy_1_epoch": accuracy,
    }


# Every trial of the timed searches trains the same ~9k-parameter network, so the two runs
# differ only in how many workers share the cores, not in which architectures they happened to draw.
FIXED_SPACE = """
[budget]
max_params = 20_000
[architecture]
stages = [3]
blocks_per_stage = [2, 2]
widths = [12]
kernels = [3]
padding = ["same"]
dropout = [0.05, 0.05]
heads = ["gap"]
[training]
max_lr = [0.05, 0.05]
batch_size = 128
weight_decay = [5e-4, 5e-4]
augment_degrees = [7.0, 7.0]
[trial]
epochs = 1
reports_per_epoch = 1
"""


def search_rate(jobs: int, trials: int, workdir: Path) -> dict:
    """Completed trials per hour of a short search on full MNIST with `jobs` workers."""
    space = workdir / "fixed_space.toml"
    space.write_text(FIXED_SPACE)
    options = SearchOptions(
        trials=trials, space=space, max_params=None, trial_epochs=None, seed=0, data_dir=None,
        val_size=10_000, storage=str(workdir / f"jobs{jobs}.journal"), study=f"bench-jobs{jobs}",
        pruner="none", jobs=jobs, threads=threads_per_process(jobs), timeout=None,
        out=workdir / f"jobs{jobs}",
    )  # fmt: skip
    start = time.perf_counter()
    study = search(options, console=Console(quiet=True))
    seconds = time.perf_counter() - start
    completed = count_states(records(study.trials))["complete"]
    peaks = [trial.peak_rss_mib or 0 for trial in records(study.trials)]
    return {"jobs": jobs, "trials": trials, "completed": completed, "seconds": seconds,
            "completed_per_hour": 3600 * completed / seconds,
            "worker_peak_rss_mib_first_last": [peaks[0], peaks[-1]]}  # fmt: skip


def settings_table(profile: machine.Profile, chosen: Setting) -> Table:
    """Every setting timed, with the one the trainer will use here marked."""
    table = Table(title=f"Trainer settings on {profile.cpu.describe()}")
    for column in ("precision", "layout", "processes", "threads", "train/s", ""):
        table.add_column(column, justify="right")
    all_threads = max(rate.threads for rate in profile.rates)
    for rate in profile.rates:
        s = rate.setting
        layout = "channels_last" if s.channels_last else "contiguous"
        mark = "chosen" if s == chosen and rate.threads == all_threads else ""
        table.add_row(s.precision, layout, str(s.processes), str(rate.threads), f"{rate.samples_per_s:,.0f}", mark)
    return table


def peak_rss_mib() -> int:
    """Peak resident memory of this process, MiB (Linux reports KiB, macOS bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "linux" else 2**20)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="nas.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k training images and 4-trial searches")
    parser.add_argument("--trials", type=int, default=8, help="trials in each timed search")
    parser.add_argument("--json", type=Path, default=Path("runs/bench.json"), help="where to write the figures")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    data = load_dataset(include_test=False)
    if args.quick:
        data = dataclasses.replace(data, train=Split(data.train.images[:10_000], data.train.labels[:10_000]))
    warmup = 20
    cpu = machine.this_cpu()
    console.print(f"CPU: {cpu.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    console.print("timing the trainer's settings (reference net, random images)...")
    profile = machine.measure(cpu)
    chosen = profile.best()
    console.print(settings_table(profile, chosen))
    try:
        console.print(f"cached the choice in {machine.save(profile)}")
    except OSError as error:
        console.print(f"could not cache the choice ({error.strerror}); set NAS_CACHE_DIR to a writable folder")
    console.print(f"{len(data.train):,} training images, seed 004's net")
    seed = seed_style_epoch(data, warmup)
    trainers = {chosen.describe(): trainer_epoch(data, warmup, chosen)}
    trials = 4 if args.quick else args.trials
    with tempfile.TemporaryDirectory() as workdir:
        searches = [search_rate(jobs, trials, Path(workdir)) for jobs in (1, 2)]
    figures = {
        "machine": {**profile.to_dict()["cpu"], "torch_threads": torch.get_num_threads()},
        "versions": results.versions(),
        "settings": profile.to_dict()["rates"],
        "chosen": dataclasses.asdict(chosen),
        "train_images": len(data.train),
        "seed_style": seed,
        "trainer_by_setting": trainers,
        "train_speedup_by_setting": {n: t["train_samples_per_s"] / seed["train_samples_per_s"]
                                     for n, t in trainers.items()},
        "search": searches,
        "jobs2_over_jobs1": searches[1]["completed_per_hour"] / searches[0]["completed_per_hour"],
        "peak_rss_mib": peak_rss_mib(),
    }  # fmt: skip
    table = Table(title=f"One epoch of seed 004's net (nas.bench, one run, {cpu.model}, {cpu.capability})")
    trainer_columns = [f"nas, {name}" for name in trainers]
    for column in ("measure", "seed-style loop", *trainer_columns):
        table.add_column(column, justify="right")
    for key, label in (("train_samples_per_s", "train samples/s"), ("eval_samples_per_s", "eval samples/s")):
        table.add_row(label, f"{seed[key]:,.0f}",
                      *(f"{t[key]:,.0f} ({t[key] / seed[key]:.2f}x)" for t in trainers.values()))  # fmt: skip
    table.add_row("val acc after 1 epoch %", f"{seed['val_accuracy_1_epoch']:.2f}",
                  *(f"{t['val_accuracy_1_epoch']:.2f}" for t in trainers.values()))  # fmt: skip
    console.print(table)
    table = Table(title=f"Search, {trials} same-size 1-epoch trials")
    for column in ("measure", "--jobs 1", "--jobs 2", "ratio"):
        table.add_column(column, justify="right")
    one, two = searches
    table.add_row("completed trials/h", f"{one['completed_per_hour']:.0f}", f"{two['completed_per_hour']:.0f}",
                  f"{figures['jobs2_over_jobs1']:.2f}x")  # fmt: skip
    table.add_row(
        "worker peak RSS MiB, first / last trial",
        *("{} / {}".format(*search["worker_peak_rss_mib_first_last"]) for search in searches),
        "",
    )
    console.print(table)
    console.print(f"peak RSS of the bench process: {figures['peak_rss_mib']} MiB")
    results.write_json(args.json, figures)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
