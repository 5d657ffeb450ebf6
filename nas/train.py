"""Training and evaluation on in-memory tensors. Knows nothing of Optuna: it reports to a callback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.data import Dataset, Split, augment, to_pixels


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
    bf16: bool = True  # bfloat16 autocast: faster convolutions on AVX-512 CPUs (README, Performance)
    seed: int = 0  # data order, augmentation and dropout

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.reports_per_epoch < 1:
            raise ValueError("epochs, batch_size and reports_per_epoch must be at least 1")
        if not self.max_lr > 0:
            raise ValueError("max_lr must be positive")


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


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy in percent, in float32, the model left in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        logits = model(to_pixels(split.images[start : start + batch_size])).float()
        labels = split.labels[start : start + batch_size]
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return total_loss / len(split), 100.0 * correct / len(split)


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
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.max_lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    # Report after these steps of each epoch, evenly spaced, the last at the epoch's end.
    report_after = {
        math.ceil(steps_per_epoch * (k + 1) / config.reports_per_epoch) for k in range(config.reports_per_epoch)
    }
    reports: list[Report] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(data.train), generator=generator)
        images, labels = data.train.images[order], data.train.labels[order]
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(1, steps_per_epoch + 1):
            model.train()
            batch = slice((step - 1) * config.batch_size, step * config.batch_size)
            x, y = to_pixels(images[batch]), labels[batch]
            if config.augment_degrees or config.augment_shift:
                x = augment(x, config.augment_degrees, config.augment_shift, generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(x.contiguous(memory_format=torch.channels_last))
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise DivergedError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if on_step is not None:
                on_step(epoch, step, steps_per_epoch)
            if step in report_after:
                val_loss, val_accuracy = evaluate(model, data.val)
                report = Report(
                    step=len(reports) + 1,
                    epoch=epoch + step / steps_per_epoch,
                    val_accuracy=val_accuracy,
                    val_loss=val_loss,
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
