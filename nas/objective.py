"""The trial side of the search: sample a candidate, check its budgets, train it briefly.

Each trial draws a genome and a training recipe, is rejected before it trains a step when it is
over the parameter or MACs budget or its retrain would be over the time budget, and otherwise
trains with a callback that reports validation accuracy to Optuna and obeys its pruner. What it
records goes through nas.trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from nas import trials
from nas.data import Dataset
from nas.errors import UserError
from nas.genome import Block, Genome, param_count
from nas.model import build_model, count_macs, with_normalisation
from nas.space import CONV_NAMES, CONVS, PADDING_NAMES, PADDINGS, ArchitectureSpace, SearchSpace, TrainingSpace
from nas.train import DivergedError, Recipe, Report, TrainConfig, train


def sample_genome(trial: optuna.Trial, arch: ArchitectureSpace) -> Genome:
    """Draw an architecture from the space; parameter names are stable across trials.

    Raises ValueError for a draw whose valid convs shrink the map away.
    """
    stages = []
    for s in range(trial.suggest_categorical("stages", arch.stages)):
        blocks = []
        for b in range(trial.suggest_int(f"s{s}_blocks", *arch.blocks_per_stage)):
            width = trial.suggest_categorical(f"s{s}_b{b}_width", arch.widths)
            kernel = trial.suggest_categorical(f"s{s}_b{b}_kernel", arch.kernels)
            # A 1x1 conv is the same padded or not, and pointwise already, so it draws neither.
            padding, conv = "same", "full"
            if kernel > 1:
                padding = trial.suggest_categorical(f"s{s}_b{b}_padding", arch.padding)
                conv = trial.suggest_categorical(f"s{s}_b{b}_conv", arch.convs)
            blocks.append(Block(width, kernel, PADDINGS[padding], CONVS[conv]))
        stages.append(tuple(blocks))
    return Genome(
        stages=tuple(stages),
        dropout=trial.suggest_float("dropout", *arch.dropout),
        head=trial.suggest_categorical("head", arch.heads),
    )


def genome_params(genome: Genome) -> dict[str, Any]:
    """The Optuna parameters from which `sample_genome` draws exactly `genome`: what enqueueing it takes."""
    params: dict[str, Any] = {"stages": len(genome.stages), "dropout": genome.dropout, "head": genome.head}
    for s, stage in enumerate(genome.stages):
        params[f"s{s}_blocks"] = len(stage)
        for b, block in enumerate(stage):
            params[f"s{s}_b{b}_width"] = block.width
            params[f"s{s}_b{b}_kernel"] = block.kernel
            if block.kernel > 1:
                params[f"s{s}_b{b}_padding"] = PADDING_NAMES[block.padded]
                params[f"s{s}_b{b}_conv"] = CONV_NAMES[block.separable]
    return params


# What a space samples.
RECIPE_KNOBS = ("max_lr", "batch_size", "weight_decay", "augment_degrees", "augment_shift", "augment_scale")


def sample_recipe(trial: optuna.Trial, training: TrainingSpace) -> Recipe:
    """Draw the training settings; a range whose ends are equal fixes the value."""
    weight_decay = training.weight_decay
    return Recipe(
        max_lr=trial.suggest_float("max_lr", *training.max_lr, log=True),
        batch_size=trial.suggest_categorical("batch_size", training.batch_size),
        weight_decay=trial.suggest_float("weight_decay", *weight_decay, log=weight_decay[0] > 0),
        augment_degrees=trial.suggest_float("augment_degrees", *training.augment_degrees),
        augment_shift=trial.suggest_float("augment_shift", *training.augment_shift),
        augment_scale=trial.suggest_float("augment_scale", *training.augment_scale),
    )


def recipe_params(recipe: Recipe) -> dict[str, float | int]:
    """The Optuna parameters from which `sample_recipe` draws exactly `recipe`."""
    return {knob: getattr(recipe, knob) for knob in RECIPE_KNOBS}


def trial_config(recipe: Recipe, space: SearchSpace, seed: int, trial_number: int, precision: str) -> TrainConfig:
    """The short training run a candidate gets: the space's trial budget under the trial's recipe.

    One process per trial: the search's parallelism is its worker processes.
    """
    return recipe.config(
        epochs=space.trial.epochs,
        reports_per_epoch=space.trial.reports_per_epoch,
        seed=seed + trial_number,
        precision=precision,
        processes=1,
    )


TrainFn = Callable[..., list[Report]]


@dataclass
class Objective:
    """Optuna objective: budget check first, then a short training run reporting to the pruner."""

    space: SearchSpace
    data: Dataset
    seed: int
    precision: str = "auto"  # TrainConfig.precision
    train_fn: TrainFn = train  # replaceable so a test can spy on what reaches training

    def __call__(self, trial: optuna.Trial) -> float:
        # Recorded per trial, so memory growth across trials shows in the study.
        trials.record_worker(trial, worker_peak_rss_mib())
        try:
            genome = sample_genome(trial, self.space.architecture)
        except ValueError as error:
            raise trials.infeasible(trial, str(error)) from None
        params = param_count(genome)
        trials.record_candidate(trial, genome, params, self.space.max_params)
        if params > self.space.max_params:
            raise trials.over_budget(trial, f"{params:,} parameters > budget {self.space.max_params:,}")
        macs = count_macs(genome)
        trials.record_macs(trial, macs, self.space.max_macs)
        if self.space.max_macs is not None and macs > self.space.max_macs:
            raise trials.over_budget(trial, f"{macs:,} MACs > budget {self.space.max_macs:,}")
        recipe = sample_recipe(trial, self.space.training)
        trials.record_recipe(trial, recipe)
        config = trial_config(recipe, self.space, self.seed, trial.number, self.precision)
        torch.manual_seed(config.seed)  # weight initialisation
        model = with_normalisation(build_model(genome), self.data.mean, self.data.std)
        max_seconds = self.space.retrain.max_seconds
        if max_seconds is not None:
            seconds = retrain_seconds(model, recipe.batch_size, self.space, self.data, self.precision)
            trials.record_retrain_estimate(trial, seconds, max_seconds)
            if seconds > max_seconds:
                raise trials.over_budget(trial, f"retrain estimated at {seconds:,.0f} s > budget {max_seconds:,.0f} s")

        final_step = config.epochs * config.reports_per_epoch
        # A known design is the mark the study must beat, so it always runs its whole trial: a deep,
        # narrow one can stumble at the one-cycle's peak (woolly-3762 x1.20 scored 78.4% after one
        # epoch in one 5k study, 98.79% after three in another).
        prunable = trials.KNOWN_DESIGN not in trial.user_attrs

        def on_report(report: Report) -> None:
            trials.record_report(trial, report.step, report.val_accuracy, report.epoch)
            # Stopping at the final report saves nothing and would discard a finished result.
            if prunable and report.step < final_step and trial.should_prune():
                raise trials.pruned(trial, f"pruned at epoch {report.epoch:.2f}")

        start = time.perf_counter()
        try:
            reports = self.train_fn(model, self.data, config, on_report)
        except DivergedError as error:
            trials.record_failure(trial, str(error))
            raise
        except KeyboardInterrupt:
            trials.record_failure(trial, "interrupted")
            raise
        finally:
            trials.record_train_seconds(trial, time.perf_counter() - start)
        return reports[-1].val_accuracy


def retrain_seconds(model: nn.Module, batch_size: int, space: SearchSpace, data: Dataset, precision: str) -> float:
    """How long nas.retrain would train `model` here by default: the space's planned epochs on every training image.

    The rest of the recipe (learning rate, weight decay, augmentation) leaves the estimate alone.
    """
    config = TrainConfig(epochs=space.retrain.epochs, batch_size=batch_size, precision=precision)
    return config.estimated_seconds(model, data.train, len(data.train) + len(data.val))


def check_retrain_reachable(space: SearchSpace, data: Dataset, precision: str = "auto") -> None:
    """Refuse a retrain time budget that the space's smallest architecture at its largest batch would overrun here."""
    if space.retrain.max_seconds is None:
        return
    smallest = space.smallest_genome()
    with torch.random.fork_rng(devices=[]):  # its initial weights are of no consequence
        model = with_normalisation(build_model(smallest), data.mean, data.std)
    batch_size = max(space.training.batch_size)
    seconds = retrain_seconds(model, batch_size, space, data, precision)
    if seconds > space.retrain.max_seconds:
        raise UserError(
            f"{space.path}: even the smallest architecture the space allows ({smallest.describe()}) would retrain "
            f"in about {seconds:,.0f} s on this machine ({space.retrain.epochs} epochs at batch {batch_size}), over "
            f"the budget of {space.retrain.max_seconds:,.0f} s; raise retrain.max_seconds (--max-retrain-seconds), "
            "plan fewer retrain epochs, or search on a faster machine"
        )


def worker_peak_rss_mib() -> int | None:
    """This process's peak resident memory since it started (Linux's VmHWM), MiB; None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kib) // 1024 if kib else None
