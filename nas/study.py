"""The study and where it lives: storages, pruners, creating or resuming, and recovering from crashes.

A journal file by default (concurrent writers on one host; optuna-dashboard opens it), or any
database URL Optuna takes, with heartbeats so that a dead worker's trial is failed and retried.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas import journal
from nas.errors import UserError
from nas.known import KnownDesign, designs_to_beat
from nas.mutation import mutate
from nas.objective import genome_params, recipe_params
from nas.space import SearchSpace
from nas.trials import KNOWN_DESIGN, MUTATION, OBJECTIVE, TrialRecord, best_first

PRUNERS = ("staged", "median", "hyperband", "none")

# Database storages only: a trial whose worker is silent for twice this is failed and retried.
HEARTBEAT_SECONDS = int(os.environ.get("NAS_HEARTBEAT_SECONDS", "30"))

DATABASE_ATTEMPTS = 3
# A trial's worker names itself, and a study's creator records its space, within milliseconds of
# Optuna creating them; one still unnamed or unrecorded after this long lost its process in between.
UNCLAIMED_SECONDS = 5.0
PARENTS = 3  # a mutant's parent is one of the study's best few completed trials


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """A database storage for a URL, else a journal file: it takes concurrent writers on one
    host (SQLite does not) and optuna-dashboard opens it directly.
    """
    if is_database(url):
        return _open_database(url)
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as error:
        raise UserError(f"cannot write the study journal {path} ({error.strerror}); check --storage") from None


def _open_database(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so any worker can fail a dead worker's trial and retry it."""
    # Workers starting together on a new database race to create Optuna's tables; a loser's
    # attempt fails, and succeeds on a retry once the tables exist.
    for attempt in range(DATABASE_ATTEMPTS):
        try:
            with _quietly_experimental():
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except ImportError as error:
            raise UserError(f"{redact(url)} needs a database driver ({error}); pip install -e '.[postgres]'") from None
        except Exception as error:  # SQLAlchemy raises many types for a bad URL or server
            if attempt == DATABASE_ATTEMPTS - 1:
                raise UserError(
                    f"cannot open storage {redact(url)} ({type(error).__name__}); check --storage"
                ) from None
            time.sleep(1.0)


@contextlib.contextmanager
def _quietly_experimental() -> Iterator[None]:
    """Heartbeats and metric names are experimental in Optuna 5; users need not hear of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def is_database(url: str) -> bool:
    """A URL with a scheme names a database; anything else is a journal file path."""
    return "://" in url


def redact(url: str) -> str:
    """The URL with any password replaced, fit to print."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


class StagedPruner(optuna.pruners.BasePruner):
    """Median pruning from the second epoch on; at the first, only the bottom quarter is stopped.

    After one epoch the one-cycle learning rate is at its peak and a trial's score is as much noise
    as signal: a known design scored 95.5% there and ended its 3 epochs at 98.6%, while its mutant
    with the recipe nudged by under 10% scored 91.2% and was pruned by the median; on the 5k
    ranking the first epoch's scores rank the retrains at Spearman 0.43, the second's at 0.89.
    So the first epoch stops only the clear failures (43-75% there).
    """

    def __init__(self, reports_per_epoch: int) -> None:
        # Report steps count from 1; neither stops a trial before its first epoch ends. Optuna's
        # percentile is of the trials kept: 75 keeps the top three quarters of a maximised score.
        self._first_epoch = optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=reports_per_epoch)
        self._later = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=reports_per_epoch)
        self._reports_per_epoch = reports_per_epoch

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        in_first_epoch = (trial.last_step or 0) <= self._reports_per_epoch
        return (self._first_epoch if in_first_epoch else self._later).prune(study, trial)


def make_pruner(name: str, space: SearchSpace) -> optuna.pruners.BasePruner:
    """Stop weak trials early: at each report their accuracy is compared with finished trials.

    Not before one full epoch: under the one-cycle warm-up, the trials with the highest peak
    learning rate look worst at first (seen here: 96.2% at half an epoch, then the study's best).
    """
    steps = space.trial.epochs * space.trial.reports_per_epoch
    if name == "staged":
        return StagedPruner(space.trial.reports_per_epoch)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=space.trial.reports_per_epoch)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=space.trial.reports_per_epoch, max_resource=steps, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def load_study(
    name: str, storage: optuna.storages.BaseStorage, space: SearchSpace, pruner: str, sampler_seed: int
) -> optuna.Study:
    """The study called `name`; KeyError if it does not exist yet."""
    return optuna.load_study(
        study_name=name,
        storage=storage,
        # constant_liar: workers sharing a study do not all sample around the same running trial.
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True, constant_liar=True),
        pruner=make_pruner(pruner, space),
    )


def open_study(
    name: str, url: str, space: SearchSpace, pruner: str, seed: int, known_designs: bool = True
) -> optuna.Study:
    """Create the study or resume it; a study made with a different space or budget is refused.

    A new study's first trials are the known designs, each as wide as its space and budgets allow
    (unless `known_designs` is False), so the search starts from the best published nets and must
    beat them.
    """
    storage = make_storage(url)
    created = False
    try:  # load first: create_study(load_if_exists=True) appends to a journal even when the study exists
        study = load_study(name, storage, space, pruner, seed)
    except KeyError:
        try:
            created_study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
            with _quietly_experimental():
                created_study.set_metric_names([OBJECTIVE])  # optuna-dashboard's name for the value
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process, here or on another machine, created it first
        study = load_study(name, storage, space, pruner, seed)
    # Only the creator records; a worker that lost the race waits for the record before checking it.
    recorded = None if created else _wait_for_record(study)
    if recorded is None:
        _record(study, space, seed, known_designs)
    elif not space.is_recorded_as(recorded["space_sha256"]) or (
        recorded.get("max_params"),
        recorded.get("max_macs"),
        recorded.get("max_retrain_seconds"),
    ) != (space.max_params, space.max_macs, space.retrain.max_seconds):
        raise UserError(
            f"study {name!r} in {redact(url)} was made with another search space "
            f"or budget ({recorded.get('space_path')}, max {recorded.get('max_params'):,} params, "
            f"max MACs {recorded.get('max_macs')}, max retrain seconds {recorded.get('max_retrain_seconds')}); "
            "pass the same --space/--max-params/--max-macs/--max-retrain-seconds, or a new --study name"
        )
    return study


def _record(study: optuna.Study, space: SearchSpace, seed: int, known_designs: bool) -> None:
    """Note what the study was made with and queue the known designs; `space_sha256` goes last,
    so a worker that sees it sees the rest."""
    if known_designs:
        for design in designs_to_beat(space):
            study.enqueue_trial(design_params(design, space), user_attrs={KNOWN_DESIGN: design.name})
    study.set_user_attr("space_path", space.path)
    study.set_user_attr("max_params", space.max_params)
    study.set_user_attr("max_macs", space.max_macs)
    study.set_user_attr("max_retrain_seconds", space.retrain.max_seconds)
    study.set_user_attr("seed", seed)
    study.set_user_attr("space_sha256", space.sha256)


def _wait_for_record(study: optuna.Study) -> dict[str, Any] | None:
    """The study's attributes, read once its creator has written `space_sha256` (so one read holds
    the whole record); None if the creator died first."""
    deadline = time.monotonic() + UNCLAIMED_SECONDS
    while "space_sha256" not in (attrs := study.user_attrs):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
    return attrs


def design_params(design: KnownDesign, space: SearchSpace) -> dict[str, Any]:
    """The Optuna parameters that draw the design, with the space's `known_recipe` if it has one;
    its dropout clipped into the space's range."""
    low, high = space.architecture.dropout
    recipe = recipe_params(space.known_recipe) if space.known_recipe else {}
    return {**genome_params(design.genome), "dropout": min(max(design.genome.dropout, low), high), **recipe}


def queue_mutant(study: optuna.Study, space: SearchSpace, rng: random.Random) -> bool:
    """Enqueue a mutation of one of the study's best completed trials; False if none was queued:
    a trial already waits to run, fewer than PARENTS trials have completed, or every mutation
    drawn is over a budget or was tried before."""
    trials = [TrialRecord.of(trial) for trial in study.get_trials(deepcopy=False)]
    if any(t.outcome == "waiting" for t in trials):
        return False
    best = best_first(trials)[:PARENTS]
    if len(best) < PARENTS:
        return False
    parent = rng.choice(best)
    mutant = mutate(parent.genome, parent.recipe, space, rng)
    if mutant is None or (mutant.genome, mutant.recipe) in {(t.genome, t.recipe) for t in trials}:
        return False
    study.enqueue_trial(
        {**genome_params(mutant.genome), **recipe_params(mutant.recipe)},
        user_attrs={MUTATION: f"of trial {parent.number}: {mutant.change}"},
    )
    return True


def fail_orphaned_trials(study: optuna.Study, url: str) -> int:
    """Mark trials left RUNNING by a dead worker on this host as failed; return how many.

    A database has heartbeats: Optuna fails and retries a dead worker's trial itself. A journal
    file has none, but each trial records the host and pid of its worker right after Optuna
    creates it. A worker killed in between leaves a trial that names no worker: it is an orphan
    once it is older than any live worker takes to name itself.
    """
    if is_database(url):
        return 0
    orphaned = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = TrialRecord.of(trial).worker
        if worker is None:
            orphan = (datetime.now() - trial.datetime_start).total_seconds() > UNCLAIMED_SECONDS
        else:
            orphan = worker[0] == socket.gethostname() and not _alive(worker[1])
        if orphan:
            study.tell(trial.number, state=TrialState.FAIL)  # TrialRecord.fail_reason: "worker died"
            orphaned += 1
    return orphaned


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def repair_journal(url: str) -> str | None:
    """Before a study file is opened: move a record torn by a crash aside (nas.journal); what was done."""
    return None if is_database(url) else journal.repair(Path(url))
