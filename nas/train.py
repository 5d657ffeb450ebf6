"""Training and evaluation on in-memory tensors. Knows nothing of Optuna: it reports to a callback.

With `processes` > 1 training is data-parallel: each replica process trains on its share of
every batch with cores / processes torch threads, and the replicas sum their gradients with
gloo's all-reduce over loopback. These networks' small convolutions and BatchNorms split badly
across threads, so on some CPUs two single-threaded replicas train faster than one process with
two threads. Whether they do and whether bf16 autocast pays is measured per machine, whether
channels-last pays per network too (nas.machine); a config leaves each choice to that measurement
unless it forces it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nas import machine
from nas.data import Dataset, Split, augment, random_affine, to_pixels
from nas.processes import die_with_parent, spawn

# Before each was a recipe knob, every run augmented with these: rotation up to 7 degrees, shift up to 2 px.
DEFAULT_AUGMENT_DEGREES = 7.0
DEFAULT_AUGMENT_SHIFT = 2.0
# A replica that waits this long for another gives up on it (one that dies is noticed at once).
REPLICA_TIMEOUT_SECONDS = 60
LOOPBACK = "127.0.0.1"  # the replicas' exchange never leaves this machine


@dataclass(frozen=True)
class Recipe:
    """The training settings a search picks with the architecture and a retrain reuses."""

    max_lr: float  # one-cycle peak learning rate
    batch_size: int
    weight_decay: float
    augment_degrees: float  # max random rotation; 0 with no shift or scaling turns augmentation off
    augment_shift: float = DEFAULT_AUGMENT_SHIFT  # max random translation, pixels (older records lack it)
    augment_scale: float = 0.0  # max random change of size: 0.1 scales by 0.9 to 1.1 (older records lack it)

    def config(self, epochs: int, **how: Any) -> TrainConfig:
        """A TrainConfig with this recipe; `how` sets the rest (seed, reports, precision, ...)."""
        return TrainConfig(epochs=epochs, **dataclasses.asdict(self), **how)


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained. SGD with Nesterov momentum under a one-cycle schedule."""

    epochs: int
    max_lr: float = 0.05  # one-cycle peak learning rate, per batch of `batch_size`
    batch_size: int = 128  # images per step
    weight_decay: float = 5e-4  # L2 on all weights, per step
    momentum: float = 0.9
    augment_degrees: float = DEFAULT_AUGMENT_DEGREES  # max random rotation, degrees
    augment_shift: float = DEFAULT_AUGMENT_SHIFT  # max random translation, pixels
    augment_scale: float = 0.0  # max random change of size, a fraction of the image's
    # Distillation (Hinton et al. 2015): this share of the loss matches the training split's
    # teacher_logits, softened by the temperature; the rest is cross-entropy with the labels.
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    reports_per_epoch: int = 1  # validation evaluations per epoch, each passed to `on_report`
    seed: int = 0  # data order, augmentation and dropout
    # How it runs on this machine; None or "auto" leaves the choice to nas.machine's measurement.
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto"
    channels_last: bool | None = None  # memory format of activations and conv weights
    processes: int | None = None  # data-parallel replicas sharing each batch, each with cores / processes threads

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.reports_per_epoch, self.processes or 1) < 1:
            raise ValueError("epochs, batch_size, reports_per_epoch and processes must be at least 1")
        if not self.max_lr > 0:
            raise ValueError("max_lr must be positive")
        if not 0 <= self.augment_scale < 1:
            raise ValueError("augment_scale must lie in [0, 1)")
        if not 0 <= self.distill_weight <= 1 or not self.distill_temperature > 0:
            raise ValueError("distill_weight must lie in [0, 1] and distill_temperature be positive")
        if self.precision not in ("auto", *machine.PRECISIONS):
            raise ValueError(f"precision must be auto, {' or '.join(machine.PRECISIONS)}, got {self.precision!r}")

    def steps_per_epoch(self, images: int) -> int:
        """Optimiser steps in one epoch over `images` training images (the last batch may be short)."""
        return math.ceil(images / self.batch_size)

    def pays_for_timing(self, images: int) -> bool:
        """Whether training on `images` images is long enough that timing its steps first costs it under 5%."""
        return self.epochs * self.steps_per_epoch(images) >= machine.MIN_STEPS_TO_TIME_LAYOUT

    def resolved(self, model: nn.Module, data: Split, threads: int | None = None) -> TrainConfig:
        """This config with precision, replica count and layout settled: as forced, else as measured here.

        Precision and replicas come from this machine's profile; the layout from timing `model` on
        one replica's share of a batch of `data`'s images, with one replica's share of `threads`
        (the training's in all; default: this process's), unless the training is too short for the
        timing to pay (then the profile's layout).
        """
        if self.precision != "auto" and self.channels_last is not None and self.processes is not None:
            return self
        best = machine.profile().best(self.precision, self.processes)
        layout = self.channels_last
        if layout is None and not self.pays_for_timing(len(data)):
            layout = best.channels_last
        if layout is None:
            replica_threads = _replica_threads(best.processes, threads)
            timing = _layout_timing(model, data, self.batch_size, best.precision, best.processes, replica_threads)
            layout = timing.channels_last_is_faster
        return dataclasses.replace(self, precision=best.precision, channels_last=layout, processes=best.processes)

    def estimated_seconds(self, model: nn.Module, data: Split, images: int) -> float:
        """Seconds this config would take here to train `model` on `images` images, evaluation aside.

        From timed bare steps of one replica on `data`'s first images, with the threads a training
        run gets (the cores shared by the replicas), turned into the trainer's steps as this
        machine's profile measured (`trainer_step`): what a search checks a retrain's time budget against.
        """
        # Timed, and the layout chosen, as the training run would: with every core, wherever this runs.
        cores = machine.this_cpu().cores
        config = self.resolved(model, data, threads=cores)
        threads = _replica_threads(config.processes, cores)
        timing = _layout_timing(model, data, config.batch_size, config.precision, config.processes, threads)
        step_seconds = machine.profile().trainer_step.of(timing.step_seconds(config.channels_last))
        return config.epochs * config.steps_per_epoch(images) * step_seconds


def _layout_timing(
    model: nn.Module, data: Split, batch_size: int, precision: str, processes: int, threads: int
) -> machine.LayoutTiming:
    """`model`'s timed steps on one replica's share of a batch of `data`'s images, with `threads` threads."""
    share = to_pixels(data.images[: math.ceil(batch_size / processes)])
    with machine.torch_threads(threads):
        return machine.time_layouts(model, share, precision)


@dataclass(frozen=True)
class Report:
    """One validation measurement during training."""

    step: int  # 1-based index of this report: reports_per_epoch per epoch
    epoch: float  # epochs completed, fractional between epoch ends
    val_accuracy: float  # percent
    val_loss: float
    train_loss: float  # the loss trained on (with a teacher, the distillation mix), mean since the previous report
    train_accuracy: float  # percent, on the augmented batches since the previous report
    lr: float
    seconds: float  # wall time since training began


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy in percent, in float32, the model left in eval mode."""
    loss_sum, correct = _loss_and_correct(model, split)
    return loss_sum / len(split), 100.0 * correct / len(split)


@torch.inference_mode()
def _loss_and_correct(model: nn.Module, split: Split, batch_size: int = 500) -> tuple[float, int]:
    """Summed cross-entropy loss and the number of correct predictions over `split`."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        logits = model(to_pixels(split.images[start : start + batch_size])).float()
        labels = split.labels[start : start + batch_size]
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return total_loss, correct


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    on_report: Callable[[Report], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
) -> list[Report]:
    """Train `model` in place on `data.train`, evaluating on `data.val` at each report point.

    `on_report` may raise to stop training early (a pruner does); the exception propagates.
    `on_step(epoch, step, steps_per_epoch)` follows every optimiser step, for progress bars.
    With more than one process this process is the first of the replicas; the others are
    started here, get no callbacks, and end before this returns or raises. While training, each
    replica, this process included, runs torch.get_num_threads() // processes threads. A
    replica that dies raises ReplicaLost here within moments (REPLICA_TIMEOUT_SECONDS if it hangs).
    """
    config = config.resolved(model, data.train)
    # The caller gets its model back in the default layout and its random state untouched.
    with torch.random.fork_rng(devices=[]):
        try:
            return _train(model, data, config, on_report, on_step)
        finally:
            model.to(memory_format=torch.contiguous_format)


def _train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    on_report: Callable[[Report], None] | None,
    on_step: Callable[[int, int, int], None] | None,
) -> list[Report]:
    if config.processes == 1:
        return _train_replica(model, data, config, None, on_report, on_step)
    threads = _replica_threads(config.processes)
    store = dist.TCPStore(
        LOOPBACK, 0, config.processes, is_master=True, timeout=_timeout(), wait_for_workers=False
    )  # port 0: any free one
    replica_data = dataclasses.replace(data, test=None)  # the test set stays with the caller
    # Each replica gets a copy: pickling for a spawned process moves tensors into shared memory,
    # so passing `model` itself would have two optimisers stepping the same weights.
    helpers = [
        spawn.Process(
            target=_helper, args=(rank, copy.deepcopy(model), replica_data, config, store.port, threads), daemon=True
        )
        for rank in range(1, config.processes)
    ]
    for helper in helpers:
        helper.start()
    finished = False
    try:
        _wait_until_started(store, helpers)
        with machine.torch_threads(threads):
            exchange = _Exchange(store, 0, config.processes, helpers)
            reports = _train_replica(model, data, config, exchange, on_report, on_step)
        finished = True
    except ReplicaLost:
        for helper in helpers:
            helper.join(timeout=1)  # a dead one's exit code
        raise ReplicaLost(_what_was_lost([helper.exitcode for helper in helpers])) from None
    finally:
        # After a normal end the others are exiting; after an early stop they would wait at the
        # next exchange until their timeout, so they are killed: they hold nothing to keep.
        for helper in helpers:
            helper.join(timeout=10 if finished else 0)
            if helper.is_alive():
                helper.kill()
                helper.join()
    return reports


def _replica_threads(processes: int, threads: int | None = None) -> int:
    """Torch threads for each of `processes` replicas sharing `threads` (default: this process's)."""
    return max(1, (threads or torch.get_num_threads()) // processes)


def _helper(rank: int, model: nn.Module, data: Dataset, config: TrainConfig, port: int, threads: int) -> None:
    """A replica other than the first: same loop, its own share of each batch, no callbacks."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the first replica's to handle
    torch.set_num_threads(threads)
    try:
        store = dist.TCPStore(LOOPBACK, port, config.processes, is_master=False, timeout=_timeout())
        store.set(f"started/{rank}", "")
        _train_replica(model, data, config, _Exchange(store, rank, config.processes), None, None)
    except (ReplicaLost, DivergedError):
        pass  # the first replica stopped or died, or raises the same divergence itself


def _wait_until_started(store: dist.Store, helpers: list) -> None:
    """Wait for every replica to reach the store, watching them: one that dies starting is reported at once."""
    keys = [f"started/{rank}" for rank in range(1, len(helpers) + 1)]
    _wait_watching(lambda: store.check(keys), helpers, "while starting")


def _wait_watching(done: Callable[[], bool], helpers: list, stage: str) -> None:
    """Wait until `done()`; a helper that dies, or REPLICA_TIMEOUT_SECONDS, ends the wait with ReplicaLost."""
    deadline = time.monotonic() + REPLICA_TIMEOUT_SECONDS
    while not done():
        if any(not helper.is_alive() for helper in helpers) or time.monotonic() > deadline:
            raise ReplicaLost(stage)
        time.sleep(0.05)


def _what_was_lost(exit_codes: list[int | None]) -> str:
    """One line for the user: which replica ended how."""
    dead = [code for code in exit_codes if code is not None]
    if not dead:
        return f"a training process stopped answering for {REPLICA_TIMEOUT_SECONDS} s"
    code = dead[0]
    if code == -signal.SIGKILL:
        return "a training process was killed (signal 9, as the out-of-memory killer does)"
    return f"a training process died ({f'signal {-code}' if code < 0 else f'exit code {code}'})"


class ReplicaLost(RuntimeError):
    """Another training replica died or stopped answering: this training cannot go on."""


def _timeout() -> timedelta:
    return timedelta(seconds=REPLICA_TIMEOUT_SECONDS)


class _Exchange:
    """Sums vectors over the replicas: gloo's all-reduce over loopback (torch.distributed, no global state).

    A peer that dies closes its sockets, so the others' all-reduce fails at once instead of
    waiting; one that hangs is given up on after REPLICA_TIMEOUT_SECONDS.
    """

    def __init__(self, store: dist.Store, rank: int, replicas: int, helpers: list = ()) -> None:
        self.rank, self.replicas = rank, replicas
        with _stderr_kept_only_on_success():
            self.group = _connect(store, rank, replicas, helpers)

    def sum(self, vector: torch.Tensor) -> torch.Tensor:
        try:
            self.group.allreduce([vector]).wait()
        except RuntimeError:
            raise ReplicaLost("while exchanging gradients") from None
        return vector


def _connect(store: dist.Store, rank: int, replicas: int, helpers: list) -> dist.ProcessGroupGloo:
    """gloo's process group, connected in a thread while `helpers` are watched.

    A peer that dies after publishing its address can leave gloo waiting for it past its own
    timeout, inside C++ where no signal reaches; so a dead helper ends the wait here instead, and
    the stuck thread, a daemon, is left behind.
    """
    connected: dict[str, Any] = {}

    def connect() -> None:
        try:
            connected["group"] = dist.ProcessGroupGloo(store, rank, replicas, _timeout())
        except RuntimeError:  # gloo's own text names C++ sources; the first replica words it instead
            pass

    thread = threading.Thread(target=connect, name="gloo-connect", daemon=True)
    thread.start()
    _wait_watching(lambda: not thread.is_alive(), helpers, "while connecting")
    if "group" not in connected:
        raise ReplicaLost("while connecting")
    return connected["group"]


@contextmanager
def _stderr_kept_only_on_success() -> Iterator[None]:
    """Hold back what this process writes to stderr (file descriptor 2) in the block; drop it if the block raises.

    gloo's C++ writes a line to stderr for each failed attempt to connect to a peer, at a level
    that cannot be turned off; when a peer died, the failure is worded in one line instead.
    """
    sys.stderr.flush()
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
        held.seek(0)
        with os.fdopen(2, "wb", closefd=False) as out:
            out.write(held.read())


def _share(start: int, stop: int, rank: int, replicas: int) -> slice:
    """This replica's contiguous part of items start..stop, the parts as equal as they can be."""
    size = stop - start
    return slice(start + size * rank // replicas, start + size * (rank + 1) // replicas)


def _train_replica(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    exchange: _Exchange | None,
    on_report: Callable[[Report], None] | None,
    on_step: Callable[[int, int, int], None] | None,
) -> list[Report]:
    """The training loop of one replica; with no exchange, the whole of training."""
    rank = exchange.rank if exchange else 0
    # Data order and augmentation draw from one generator that every replica seeds alike, so
    # they agree on each batch; dropout masks come from each replica's own global seed.
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed + rank)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    params = list(model.parameters())
    # foreach: off CUDA torch's default is a Python loop over the tensors; foreach makes the same
    # updates, bit for bit, faster (the 8k net's 36 tensors: 0.37-0.46 ms a step against 0.58-0.87).
    optimizer = torch.optim.SGD(
        params,
        lr=config.max_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
        foreach=True,
    )
    steps_per_epoch = config.steps_per_epoch(len(data.train))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    # Report after these steps of each epoch, evenly spaced, the last at the epoch's end.
    report_after = {
        math.ceil(steps_per_epoch * (k + 1) / config.reports_per_epoch) for k in range(config.reports_per_epoch)
    }
    val_share = _share(0, len(data.val), rank, config.processes)
    val = Split(data.val.images[val_share], data.val.labels[val_share])
    augmenting = bool(config.augment_degrees or config.augment_shift or config.augment_scale)
    teacher_logits = data.train.teacher_logits
    if config.distill_weight and teacher_logits is None:
        raise ValueError("distill_weight is set but the training split has no teacher_logits")
    reports: list[Report] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(data.train), generator=generator)
        images, labels = data.train.images[order], data.train.labels[order]
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(1, steps_per_epoch + 1):
            model.train()
            first, last = (step - 1) * config.batch_size, min(step * config.batch_size, len(labels))
            mine = _share(first, last, rank, config.processes)
            x, y = to_pixels(images[mine]), labels[mine]
            if augmenting:
                theta = random_affine(
                    last - first, config.augment_degrees, config.augment_shift, generator, config.augment_scale
                )
                x = augment(x, theta[mine.start - first : mine.stop - first])
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                logits = model(x.contiguous(memory_format=layout))
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                if config.distill_weight:
                    taught = distillation_loss(logits.float(), teacher_logits[order[mine]], config.distill_temperature)
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * taught
            (loss / (last - first)).backward()  # this replica's part of the batch's mean loss
            totals = torch.stack([loss.detach(), (logits.argmax(1) == y).sum().float()])
            if exchange is not None:
                summed = exchange.sum(torch.cat([_flat_grads(params), totals]))
                _set_grads(params, summed[:-2])
                totals = summed[-2:]
            batch_loss, batch_correct = totals.tolist()
            if not math.isfinite(batch_loss):
                raise DivergedError(f"loss became {batch_loss} at epoch {epoch + 1}, step {step}")
            optimizer.step()
            schedule.step()
            loss_sum += batch_loss
            correct += int(batch_correct)
            seen += last - first
            if on_step is not None:
                on_step(epoch, step, steps_per_epoch)
            if step in report_after:
                if exchange is not None:
                    _average_buffers(model, exchange)
                val_totals = torch.tensor(_loss_and_correct(model, val), dtype=torch.float32)
                if exchange is not None:
                    val_totals = exchange.sum(val_totals)
                val_loss, val_correct = val_totals.tolist()
                report = Report(
                    step=len(reports) + 1,
                    epoch=epoch + step / steps_per_epoch,
                    val_accuracy=100.0 * val_correct / len(data.val),
                    val_loss=val_loss / len(data.val),
                    train_loss=loss_sum / seen,
                    train_accuracy=100.0 * correct / seen,
                    lr=schedule.get_last_lr()[0],
                    seconds=time.perf_counter() - start,
                )
                reports.append(report)
                loss_sum, correct, seen = 0.0, 0, 0
                if on_report is not None:
                    on_report(report)
    return reports


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed KL divergence from the teacher's softened predictions to the student's, times T squared.

    T squared keeps its gradients on the scale of cross-entropy's whatever the temperature.
    """
    student = F.log_softmax(logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params])


def _set_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = torch.empty_like(p).copy_(grad.view_as(p))  # empty_like keeps p's channels_last layout


def _average_buffers(model: nn.Module, exchange: _Exchange) -> None:
    """Give every replica the mean of their BatchNorm running statistics, before evaluating."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if buffers:
        mean = exchange.sum(torch.cat([b.reshape(-1) for b in buffers])) / exchange.replicas
        for buffer, value in zip(buffers, mean.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(value.view_as(buffer))
