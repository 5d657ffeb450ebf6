"""What trains fastest on this CPU: precision, memory layout and replicas, measured once and cached.

These networks' small convolutions run at very different speeds across CPUs. bf16 autocast is
faster than fp32 where the CPU computes in bf16 natively (AVX-512-BF16, AMX), and 4-6x slower
where it does not (AVX2-only). Two one-thread replicas beat one two-thread process on some
machines only. So the first training on a machine times a few steps of each setting (about forty
seconds) and caches the figures per CPU, core count, torch version and OpenMP wait policy, outside
the repository; later runs read the cache.

Channels-last helps or hurts depending on the network as much as the CPU (on one AVX2 EPYC it
trains the reference network about 20% faster and the shipped 5k and 20k winners slower), so each
network's layout is timed on its own, in a second or two, and cached beside the profile. Those
timed steps, scaled by what the trainer adds to a bare step here (`TrainerStep`), also estimate
how long a training will take before it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import itertools
import json
import math
import os
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nas.data import Dataset, Split, to_pixels
from nas.genome import Block, Genome
from nas.model import build_model, with_normalisation

PRECISIONS = ("fp32", "bf16")
# Replica counts compared: one process with every thread, or two replicas sharing the cores.
PROCESS_CHOICES = (1, 2)
SECONDS_PER_SETTING = 1.5  # timed steps of each setting, after the warm-up steps
WARMUP_STEPS = 5  # the first steps build oneDNN's kernels
LAYOUT_ROUNDS = 12  # timed steps of each layout per network, taken in turn so the VM's drift hits both alike
# A training of fewer steps (a test's, say) takes the profile's layout: timing its own would cost
# more than 5% of it (the timing takes 2 x (WARMUP_STEPS + LAYOUT_ROUNDS) steps), more than it could save.
MIN_STEPS_TO_TIME_LAYOUT = 20 * 2 * (WARMUP_STEPS + LAYOUT_ROUNDS)


@dataclass(frozen=True)
class Setting:
    """How the trainer runs: the trainer's three machine-dependent choices, named as TrainConfig's fields."""

    precision: str  # "fp32", or "bf16" autocast
    channels_last: bool  # memory format of activations and conv weights
    processes: int  # data-parallel replicas, each with cores // processes threads

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.precision} {layout}, {self.processes} process{'es' if self.processes > 1 else ''}"


@dataclass(frozen=True)
class Cpu:
    model: str  # as /proc/cpuinfo names it
    capability: str  # torch's SIMD level: AVX2, AVX512, ...
    native_bf16: bool  # oneDNN computes bf16 natively (AVX-512-BF16 or AMX); shown, not used to choose
    cores: int  # logical CPUs (os.cpu_count())

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.model}, {self.cores} cores, {self.capability}, {bf16}"


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """--precision, as the search and the retrain both take it."""
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="fp32, or bf16 autocast (default auto: the faster on this CPU, measured once and cached)",
    )


def this_cpu() -> Cpu:
    return Cpu(
        model=_cpu_model(),
        capability=torch.backends.cpu.get_cpu_capability(),
        native_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        cores=os.cpu_count() or 1,
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Rate:
    """One measurement: training samples per second of `setting` with `threads` torch threads in all."""

    setting: Setting
    threads: int
    samples_per_s: float


@dataclass(frozen=True)
class TrainerStep:
    """The trainer's step against a network's bare one (forward, backward, update): `scale` times it,
    for the work that grows with the batch (augmentation), plus `seconds` for what does not (the
    replicas' exchange and waiting on each other, Python).
    """

    scale: float
    seconds: float

    def of(self, bare_seconds: float) -> float:
        return self.scale * bare_seconds + self.seconds


@dataclass(frozen=True)
class Profile:
    """What was measured on one CPU with one torch version."""

    cpu: Cpu
    torch_version: str
    rates: tuple[Rate, ...]
    # Timed on the reference network in the fastest setting: what turns a network's timed bare
    # steps (`LayoutTiming`) into an estimate of its training time.
    trainer_step: TrainerStep

    def best(self, precision: str = "auto", processes: int | None = None) -> Setting:
        """The fastest setting measured, within a forced precision or replica count if given.

        Precision and layout come from the one-thread runs (one replica's view, or one search
        worker's); the replica count from the runs that used every core.
        """
        one_thread = [r for r in self.rates if r.threads == 1 and precision in ("auto", r.setting.precision)]
        fastest = max(one_thread, key=lambda r: r.samples_per_s).setting
        if processes is None:
            splits = [r for r in self.rates if r.threads > 1]
            processes = max(splits, key=lambda r: r.samples_per_s).setting.processes if splits else 1
        return Setting(fastest.precision, fastest.channels_last, processes)

    def to_dict(self) -> dict:
        return {
            "cpu": asdict(self.cpu),
            "torch": self.torch_version,
            "rates": [asdict(r) for r in self.rates],
            "trainer_step": asdict(self.trainer_step),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        rates = tuple(Rate(Setting(**r["setting"]), r["threads"], r["samples_per_s"]) for r in data["rates"])
        return cls(Cpu(**data["cpu"]), data["torch"], rates, TrainerStep(**data["trainer_step"]))


def cache_path(cpu: Cpu, kind: str = "machine") -> Path:
    """Per CPU model, SIMD level, core count, torch version and OpenMP wait policy: a change of any re-measures.

    The wait policy (nas/__init__.py) changes how fast several threads in one process train.

    `kind` names the file: "machine" for the profile, "layouts" for the networks' layouts.
    """
    root = os.environ.get("NAS_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nas"
    settings = [asdict(cpu), torch.__version__, os.environ.get("OMP_WAIT_POLICY")]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    return Path(root) / f"{kind}-{key}.json"


def profile(announce=print) -> Profile:
    """This machine's profile: from the cache, or measured now (once) and cached.

    Concurrent callers (search workers, parallel runs) wait on one lock, so a single process
    measures while the others wait for its figures instead of timing each other's load.
    """
    cpu = this_cpu()
    path = cache_path(cpu)
    timing = f"timing training settings on this CPU ({cpu.describe()}); about forty seconds"
    measured = None
    try:
        with _locked(path):
            cached = _read(path)
            if cached is not None:
                return cached
            announce(timing + ", once per machine")
            measured = measure(cpu)
            _write(path, measured.to_dict())
    except OSError as error:  # a read-only home, say: measure each time rather than fail
        announce(f"cannot cache the timings in {path.parent} ({error.strerror}); set NAS_CACHE_DIR to keep them")
        if measured is None:  # the cache could not even be opened
            announce(timing)
            measured = measure(cpu)
    announce(f"fastest here: {measured.best().describe()}")
    return measured


def save(measured: Profile) -> Path:
    """Replace this machine's cached profile with a new measurement (nas.bench re-measures)."""
    path = cache_path(measured.cpu)
    with _locked(path):
        _write(path, measured.to_dict())
    return path


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch threads, then give the caller back its own count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _read(path: Path) -> Profile | None:
    """The cached profile, or None when there is none or it cannot be read (it is then re-measured)."""
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(cpu: Cpu | None = None, seconds: float = SECONDS_PER_SETTING) -> Profile:
    """Time training steps of a reference network under each setting.

    First every precision and layout with one one-thread replica (what a search worker or one
    replica runs); then, with the fastest of those, one process using every core against two
    replicas sharing them; last, in the fastest setting, the trainer's step against the bare one.
    """
    cpu = cpu or this_cpu()
    rates = [
        Rate(setting, 1, _samples_per_second(setting, 1, seconds))
        for setting in (Setting(p, layout, 1) for p, layout in itertools.product(PRECISIONS, (True, False)))
    ]
    fastest = max(rates, key=lambda r: r.samples_per_s).setting
    if cpu.cores > 1:
        for processes in PROCESS_CHOICES:
            split = Setting(fastest.precision, fastest.channels_last, processes)
            rates.append(Rate(split, cpu.cores, _samples_per_second(split, cpu.cores, seconds)))
    measured = Profile(cpu, torch.__version__, tuple(rates), TrainerStep(1.0, 0.0))  # until timed, in the fastest
    return replace(measured, trainer_step=_trainer_step(measured.best(), cpu.cores, seconds))


# A mid-sized network of the default space (the shipped mnist_20k winner, 18,902 parameters).
REFERENCE_GENOME = Genome(
    stages=((Block(20),), (Block(8, kernel=1), Block(12), Block(24)), (Block(24), Block(20), Block(8))),
    dropout=0.07,
    head="fc",
)
REFERENCE_BATCH_SIZE = 128
SMALL_BATCH_SIZE = 32  # the smallest the spaces offer: where the trainer's fixed cost per step weighs most


def synthetic_dataset(n: int, seed: int = 0) -> Dataset:
    """Random MNIST-shaped images and labels: enough to time training, nothing to learn from."""
    generator = torch.Generator().manual_seed(seed)

    def split(size: int) -> Split:
        images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (size,), generator=generator))

    return Dataset(train=split(n), val=split(64), test=None, mean=0.5, std=0.29)


def _trainer_step(fastest: Setting, cores: int, seconds: float) -> TrainerStep:
    """The trainer's step against the reference network's bare one, at two batch sizes: the line through both."""
    points = []
    for batch_size in (SMALL_BATCH_SIZE, REFERENCE_BATCH_SIZE):
        trainer = batch_size / _samples_per_second(fastest, cores, seconds, batch_size)
        data = synthetic_dataset(math.ceil(batch_size / fastest.processes))
        model = _reference_network(data)
        with torch_threads(max(1, cores // fastest.processes)):
            timed = _layout_step_seconds(model, to_pixels(data.train.images), fastest.precision)
        points.append((timed[fastest.channels_last] / LAYOUT_ROUNDS, trainer))
    (bare_small, small), (bare_large, large) = points
    scale = max(1.0, (large - small) / (bare_large - bare_small))  # the trainer does at least the bare step
    return TrainerStep(scale, max(0.0, large - scale * bare_large))


def _reference_network(data: Dataset) -> nn.Module:
    """The reference network, initialised alike wherever it is timed."""
    torch.manual_seed(0)
    return with_normalisation(build_model(REFERENCE_GENOME), data.mean, data.std)


class _Enough(Exception):
    """Raised from the step callback once a setting has been timed long enough."""


@dataclass(frozen=True)
class LayoutTiming:
    """Seconds of one bare training step (forward, backward, update) of a network, in each memory layout."""

    channels_last: float
    contiguous: float

    @property
    def channels_last_is_faster(self) -> bool:
        return self.channels_last < self.contiguous

    def step_seconds(self, channels_last: bool) -> float:
        return self.channels_last if channels_last else self.contiguous


def time_layouts(model: nn.Module, images: torch.Tensor, precision: str) -> LayoutTiming:
    """How fast `model` trains in channels-last and in the default layout on this CPU.

    Timed with one replica's batch of pixels (`images`) and its threads, on copies of the model,
    once per network, batch shape, precision and thread count: the figures are cached, so a rerun
    trains in the same layout (the two round differently) and estimates the same time.
    """
    # A dropout rate changes no step's time: mutants that differ only in it share one timing, and so one estimate.
    architecture = re.sub(r"Dropout\(p=[^,)]*", "Dropout(p=any", repr(model))
    key = f"{architecture} {list(images.shape)} {precision} {torch.get_num_threads()} threads"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_path(this_cpu(), "layouts")
    cached = _timing(_read_layouts(path).get(key))
    if cached is not None:
        return cached
    seconds = _layout_step_seconds(model, images, precision)
    timed = {"channels_last": seconds[True] / LAYOUT_ROUNDS, "contiguous": seconds[False] / LAYOUT_ROUNDS}
    with contextlib.suppress(OSError), _locked(path):  # unwritable: measured again next time
        layouts = _read_layouts(path)
        if _timing(layouts.get(key)) is None:  # else a concurrent run's figures came first: keep them
            layouts[key] = timed
        timed = layouts[key]
        _write(path, layouts)
    return LayoutTiming(**timed)


def _timing(entry: object) -> LayoutTiming | None:
    """A cached entry as a LayoutTiming; None for anything else (an older cache's bare answer, say)."""
    if not isinstance(entry, dict) or set(entry) != {"channels_last", "contiguous"}:
        return None
    if not all(isinstance(value, float) and value > 0 for value in entry.values()):
        return None
    return LayoutTiming(**entry)


def _read_layouts(path: Path) -> dict:
    """The cached layout timings by network key; empty when there are none or the file cannot be read."""
    try:
        layouts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return layouts if isinstance(layouts, dict) else {}


def _layout_step_seconds(model: nn.Module, images: torch.Tensor, precision: str) -> dict[bool, float]:
    """Seconds of LAYOUT_ROUNDS training steps of `model` on `images`, by channels_last, one step of each in turn."""
    labels = torch.arange(len(images)) % 10
    runs = {}
    for channels_last in (True, False):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        copied = copy.deepcopy(model).to(memory_format=layout).train()
        optimizer = torch.optim.SGD(copied.parameters(), lr=1e-3, momentum=0.9)
        runs[channels_last] = copied, optimizer, images.contiguous(memory_format=layout)

    def step(channels_last: bool) -> float:
        copied, optimizer, x = runs[channels_last]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            F.cross_entropy(copied(x).float(), labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    seconds = {True: 0.0, False: 0.0}
    with torch.random.fork_rng(devices=[]):  # dropout's draws leave the caller's generator alone
        for index in range(WARMUP_STEPS + LAYOUT_ROUNDS):
            for channels_last in seconds:
                spent = step(channels_last)
                if index >= WARMUP_STEPS:
                    seconds[channels_last] += spent
    return seconds


def _samples_per_second(
    setting: Setting, threads: int, seconds: float, batch_size: int = REFERENCE_BATCH_SIZE
) -> float:
    """Train the reference network under `setting` on random images until `seconds` have been timed."""
    from nas.train import TrainConfig, train  # here, not at the top: the trainer imports this module

    data = synthetic_dataset(2048)
    model = _reference_network(data)
    # Epochs enough that the fastest setting on any CPU is timed long before training would end.
    config = TrainConfig(epochs=100, batch_size=batch_size, **asdict(setting))
    marks: dict[str, float] = {}

    def on_step(epoch: int, step: int, steps: int) -> None:
        done = epoch * steps + step
        now = time.perf_counter()
        if done == WARMUP_STEPS:
            marks["start"] = now
        elif done > WARMUP_STEPS and now - marks["start"] >= seconds:
            marks["end"], marks["steps"] = now, done - WARMUP_STEPS
            raise _Enough

    with torch_threads(threads), contextlib.suppress(_Enough):
        train(model, data, config, on_step=on_step)
    return marks["steps"] * config.batch_size / (marks["end"] - marks["start"])
