"""Training and evaluation on in-memory tensors. Knows nothing of Optuna: it reports to a callback.

With `processes` > 1 training is data-parallel: each replica process trains on its share of
every batch with cores / processes torch threads, and the replicas sum their gradients through
shared memory. These networks' small convolutions and BatchNorms split badly across threads,
so on some CPUs two single-threaded replicas train faster than one process with two threads.
Whether they do, and whether bf16 autocast or channels-last pays, is measured per machine
(nas.machine); a config leaves each choice to that measurement unless it forces it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas import machine
from nas.data import Dataset, Split, augment, random_affine, to_pixels
from nas.processes import die_with_parent, spawn

# A replica that waits this long for the others at a barrier gives up: one of them has died.
REPLICA_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained. SGD with Nesterov momentum under a one-cycle schedule."""

    epochs: int
    max_lr: float = 0.05  # one-cycle peak learning rate, per batch of `batch_size`
    batch_size: int = 128  # images per step
    weight_decay: float = 5e-4  # L2 on all weights, per step
    momentum: float = 0.9
    augment_degrees: float = 7.0  # max random rotation, degrees; 0 turns augmentation off
    augment_shift: float = 2.0  # max random translation, pixels
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
        if self.precision not in ("auto", *machine.PRECISIONS):
            raise ValueError(f"precision must be auto, {' or '.join(machine.PRECISIONS)}, got {self.precision!r}")

    def resolved(self) -> TrainConfig:
        """This config with precision, layout and replica count settled: as forced, else as measured here."""
        if self.precision != "auto" and self.channels_last is not None and self.processes is not None:
            return self
        best = machine.profile().best(self.precision, self.processes)
        layout = best.channels_last if self.channels_last is None else self.channels_last
        return dataclasses.replace(self, precision=best.precision, channels_last=layout, processes=best.processes)


@dataclass(frozen=True)
class Report:
    """One validation measurement during training."""

    step: int  # 1-based index of this report: reports_per_epoch per epoch
    epoch: float  # epochs completed, fractional between epoch ends
    val_accuracy: float  # percent
    val_loss: float
    train_loss: float  # mean over the steps since the previous report
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
    replica, this process included, runs torch.get_num_threads() // processes threads.
    """
    config = config.resolved()
    if config.processes == 1:
        return _train_replica(model, data, config, 0, None, on_report, on_step)
    threads = max(1, torch.get_num_threads() // config.processes)
    group = _Group(config.processes, _exchange_size(model))
    replica_data = dataclasses.replace(data, test=None)  # the test set stays with the caller
    # Each replica gets a copy: pickling for a spawned process moves tensors into shared memory,
    # so passing `model` itself would have two optimisers stepping the same weights.
    helpers = [
        spawn.Process(
            target=_helper, args=(rank, copy.deepcopy(model), replica_data, config, group, threads), daemon=True
        )
        for rank in range(1, config.processes)
    ]
    for helper in helpers:
        helper.start()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_replica(model, data, config, 0, group, on_report, on_step)
    except threading.BrokenBarrierError:
        codes = [helper.exitcode for helper in helpers]
        raise RuntimeError(f"a training replica stopped (exit codes {codes}; any Python error is above)") from None
    except BaseException:
        group.barrier.abort()  # replicas waiting at the barrier stop too
        raise
    finally:
        torch.set_num_threads(previous_threads)
        for helper in helpers:
            helper.join(timeout=30)
            if helper.is_alive():
                helper.kill()


def _helper(rank: int, model: nn.Module, data: Dataset, config: TrainConfig, group: _Group, threads: int) -> None:
    """A replica other than the first: same loop, its own share of each batch, no callbacks."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the first replica's to handle
    torch.set_num_threads(threads)
    try:
        _train_replica(model, data, config, rank, group, None, None)
    except (threading.BrokenBarrierError, DivergedError):
        pass  # the first replica stopped early, or raises the same divergence itself
    except BaseException:
        group.barrier.abort()
        raise


class _Group:
    """Sums a vector over the replicas through shared memory: one barrier per sum.

    Two slots alternate, so a fast replica writing the next sum never overwrites one that a
    slow replica is still reading (it cannot pass the next barrier until that reader arrives).
    """

    def __init__(self, replicas: int, size: int) -> None:
        self.replicas = replicas
        self.slots = torch.zeros(2, replicas, size).share_memory_()
        self.barrier = spawn.Barrier(replicas)
        self.calls = 0

    def sum(self, rank: int, vector: torch.Tensor) -> torch.Tensor:
        slot = self.slots[self.calls % 2, :, : len(vector)]
        self.calls += 1
        slot[rank].copy_(vector)
        self.barrier.wait(timeout=REPLICA_TIMEOUT_SECONDS)
        return slot.sum(0)


def _exchange_size(model: nn.Module) -> int:
    """The longest vector the replicas sum: the gradients plus two statistics, or the float buffers."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return max(params + 2, buffers, 2)


def _share(start: int, stop: int, rank: int, replicas: int) -> slice:
    """This replica's contiguous part of items start..stop, the parts as equal as they can be."""
    size = stop - start
    return slice(start + size * rank // replicas, start + size * (rank + 1) // replicas)


def _train_replica(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    rank: int,
    group: _Group | None,
    on_report: Callable[[Report], None] | None,
    on_step: Callable[[int, int, int], None] | None,
) -> list[Report]:
    """The training loop of one replica; with no group, the whole of training."""
    # Data order and augmentation draw from one generator that every replica seeds alike, so
    # they agree on each batch; dropout masks come from each replica's own global seed.
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed + rank)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        params, lr=config.max_lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    # Report after these steps of each epoch, evenly spaced, the last at the epoch's end.
    report_after = {
        math.ceil(steps_per_epoch * (k + 1) / config.reports_per_epoch) for k in range(config.reports_per_epoch)
    }
    val_share = _share(0, len(data.val), rank, config.processes)
    val = Split(data.val.images[val_share], data.val.labels[val_share])
    augmenting = bool(config.augment_degrees or config.augment_shift)
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
                theta = random_affine(last - first, config.augment_degrees, config.augment_shift, generator)
                x = augment(x, theta[mine.start - first : mine.stop - first])
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                logits = model(x.contiguous(memory_format=layout))
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (loss / (last - first)).backward()  # this replica's part of the batch's mean loss
            totals = torch.stack([loss.detach(), (logits.argmax(1) == y).sum().float()])
            if group is not None:
                summed = group.sum(rank, torch.cat([_flat_grads(params), totals]))
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
                if group is not None:
                    _average_buffers(model, rank, group)
                val_totals = torch.tensor(_loss_and_correct(model, val))
                if group is not None:
                    val_totals = group.sum(rank, val_totals)
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


def _flat_grads(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params])


def _set_grads(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    for p, grad in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad = torch.empty_like(p).copy_(grad.view_as(p))  # empty_like keeps p's channels_last layout


def _average_buffers(model: nn.Module, rank: int, group: _Group) -> None:
    """Give every replica the mean of their BatchNorm running statistics, before evaluating."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if buffers:
        mean = group.sum(rank, torch.cat([b.reshape(-1) for b in buffers])) / group.replicas
        for buffer, value in zip(buffers, mean.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(value.view_as(buffer))
