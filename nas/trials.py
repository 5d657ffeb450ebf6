"""A trial's record: what the objective writes on an Optuna trial, and how everything else reads it.

The attribute names and their encodings live here and nowhere else. The objective writes through
the functions below; reports, recovery and best.json read a trial through `TrialRecord`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.genome import Genome
from nas.train import Recipe

OBJECTIVE = "val_accuracy"  # percent on the validation split, at the trial's final report
PARAMS_CONSTRAINT = "params_over_budget"  # params - budget: feasible when <= 0
MACS_CONSTRAINT = "macs_over_budget"  # with a MACs budget: macs - max_macs, feasible when <= 0
# With a retrain time budget: estimated seconds - max_seconds, feasible when <= 0.
RETRAIN_CONSTRAINT = "retrain_seconds_over_budget"
OUTCOMES = ("waiting", "running", "complete", "over budget", "infeasible", "pruned", "failed")

_WORKER, _PEAK_RSS, _GENOME, _PARAMS, _MACS = "worker", "worker_peak_rss_mib", "genome", "params", "macs"
_PRUNE_REASON, _FAIL_REASON, _EPOCHS_RUN, _TRAIN_SECONDS = "prune_reason", "fail_reason", "epochs_run", "train_seconds"
_RECIPE, _RETRAIN_SECONDS, _BUDGET_EXCEEDED = "recipe", "estimated_retrain_seconds", "budget_exceeded"
KNOWN_DESIGN = "known_design"  # set when the study enqueues a published design as a trial
MUTATION = "mutation"  # set when a worker enqueues a mutation of a trial: "of trial N: <change>"
_OVER_BUDGET, _INFEASIBLE, _BY_PRUNER = "over budget", "infeasible", "pruner"


def record_worker(trial: optuna.Trial, peak_rss_mib: int | None) -> None:
    """Which process runs the trial (so a dead one's trial can be found) and its memory so far."""
    trial.set_user_attr(_WORKER, f"{socket.gethostname()}:{os.getpid()}")
    if peak_rss_mib is not None:
        trial.set_user_attr(_PEAK_RSS, peak_rss_mib)


def record_candidate(trial: optuna.Trial, genome: Genome, params: int, max_params: int) -> None:
    trial.set_user_attr(_GENOME, genome.to_dict())
    trial.set_user_attr(_PARAMS, params)
    trial.set_constraint(PARAMS_CONSTRAINT, params - max_params)


def record_macs(trial: optuna.Trial, macs: int, max_macs: int | None) -> None:
    trial.set_user_attr(_MACS, macs)
    if max_macs is not None:
        trial.set_constraint(MACS_CONSTRAINT, macs - max_macs)


def record_retrain_estimate(trial: optuna.Trial, seconds: float, max_seconds: float) -> None:
    trial.set_user_attr(_RETRAIN_SECONDS, round(seconds, 1))
    trial.set_constraint(RETRAIN_CONSTRAINT, seconds - max_seconds)


def over_budget(trial: optuna.Trial, message: str) -> optuna.TrialPruned:
    """Mark the trial as rejected for its size or time, never trained; raise what this returns."""
    trial.set_user_attr(_PRUNE_REASON, _OVER_BUDGET)
    trial.set_user_attr(_BUDGET_EXCEEDED, message)
    return optuna.TrialPruned(message)


def infeasible(trial: optuna.Trial, message: str) -> optuna.TrialPruned:
    """Mark the trial as a draw that is no network (its map shrinks away), never trained; raise what this returns."""
    trial.set_user_attr(_PRUNE_REASON, _INFEASIBLE)
    return optuna.TrialPruned(message)


def record_recipe(trial: optuna.Trial, recipe: Recipe) -> None:
    trial.set_user_attr(_RECIPE, dataclasses.asdict(recipe))


def record_report(trial: optuna.Trial, step: int, accuracy: float, epoch: float) -> None:
    trial.report(accuracy, step)
    trial.set_user_attr(_EPOCHS_RUN, round(epoch, 3))


def pruned(trial: optuna.Trial, message: str) -> optuna.TrialPruned:
    """Mark the trial as stopped by the pruner; raise what this returns."""
    trial.set_user_attr(_PRUNE_REASON, _BY_PRUNER)
    return optuna.TrialPruned(message)


def record_failure(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(_FAIL_REASON, reason)


def record_train_seconds(trial: optuna.Trial, seconds: float) -> None:
    trial.set_user_attr(_TRAIN_SECONDS, round(seconds, 1))


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the search reports it; fields a trial never reached are None."""

    number: int
    outcome: str  # one of OUTCOMES: waiting (enqueued, not started); over budget (never trained) and pruned apart
    accuracy: float | None  # the final value, or a pruned trial's last report
    reports: tuple[float, ...]  # validation accuracy at each report the trial made, in order
    genome: Genome | None
    params: int | None
    macs: int | None
    recipe: Recipe | None
    known_design: str | None  # the published design this trial is, if it was enqueued as one
    mutation: str | None  # "of trial N: <change>", if it was enqueued as a mutation of trial N
    epochs_run: float | None
    train_seconds: float | None
    fail_reason: str  # empty unless failed; a failed trial with no record lost its worker
    worker: tuple[str, int] | None  # host and pid of the process that ran it
    peak_rss_mib: int | None
    estimated_retrain_seconds: float | None = None  # with a retrain time budget: estimated before the trial trained
    budget_exceeded: str = ""  # which budget an over-budget trial broke, and by how much

    @property
    def finished(self) -> bool:
        return self.outcome not in ("waiting", "running")

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        host, _, pid = str(attrs.get(_WORKER, "")).rpartition(":")
        return cls(
            number=trial.number,
            outcome=_outcome(trial),
            accuracy=_accuracy(trial),
            reports=tuple(trial.intermediate_values[step] for step in sorted(trial.intermediate_values)),
            genome=Genome.from_dict(attrs[_GENOME]) if _GENOME in attrs else None,
            params=attrs.get(_PARAMS),
            macs=attrs.get(_MACS),
            recipe=Recipe(**attrs[_RECIPE]) if _RECIPE in attrs else None,
            known_design=attrs.get(KNOWN_DESIGN),
            mutation=attrs.get(MUTATION),
            epochs_run=attrs.get(_EPOCHS_RUN),
            train_seconds=attrs.get(_TRAIN_SECONDS),
            fail_reason=attrs.get(_FAIL_REASON, "worker died") if trial.state == TrialState.FAIL else "",
            worker=(host, int(pid)) if host and pid.isdigit() else None,
            peak_rss_mib=attrs.get(_PEAK_RSS),
            estimated_retrain_seconds=attrs.get(_RETRAIN_SECONDS),
            budget_exceeded=attrs.get(_BUDGET_EXCEEDED, ""),
        )


def best_first(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The completed trials, best first."""
    return sorted((t for t in trials if t.outcome == "complete"), key=lambda t: -t.accuracy)


def _outcome(trial: FrozenTrial) -> str:
    if trial.state == TrialState.PRUNED:
        reason = trial.user_attrs.get(_PRUNE_REASON)
        return {_OVER_BUDGET: "over budget", _INFEASIBLE: "infeasible"}.get(reason, "pruned")
    return {TrialState.WAITING: "waiting", TrialState.RUNNING: "running", TrialState.COMPLETE: "complete"}.get(
        trial.state, "failed"
    )


def _accuracy(trial: FrozenTrial) -> float | None:
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
