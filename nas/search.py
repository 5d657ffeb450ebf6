"""The search: an Optuna study over a search space, under a hard parameter budget.

The only module that imports Optuna. It samples a genome and a learning rate from each trial,
rejects over-budget candidates before they train, and hands the rest to the trainer with a
callback that reports validation accuracy and obeys the pruner.

    python -m nas.search --trials 50
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import io
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from nas import results
from nas.data import Dataset, load_dataset
from nas.errors import UserError, cli
from nas.genome import Genome, Stage, param_count
from nas.model import build_model, count_macs, with_normalisation
from nas.space import DEFAULT_SPACE, ArchitectureSpace, SearchSpace, load_space
from nas.train import DivergedError, Report, TrainConfig, train

RESULTS_DIR = Path("results")
BUDGET_CONSTRAINT = "params_over_budget"  # trial constraint: params - budget, feasible when <= 0
PRUNERS = ("median", "hyperband", "none")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def sample_genome(trial: optuna.Trial, arch: ArchitectureSpace) -> Genome:
    """Draw an architecture from the space; parameter names are stable across trials."""
    stages = []
    for s in range(trial.suggest_categorical("stages", arch.stages)):
        transition = trial.suggest_categorical(f"s{s}_transition", arch.transitions) if s else 0
        blocks = trial.suggest_int(f"s{s}_blocks", *arch.blocks_per_stage)
        widths = tuple(trial.suggest_categorical(f"s{s}_b{b}_width", arch.widths) for b in range(blocks))
        stages.append(Stage(widths, transition))
    return Genome(
        stages=tuple(stages),
        dropout=trial.suggest_float("dropout", *arch.dropout),
        head=trial.suggest_categorical("head", arch.heads),
    )


def trial_config(trial: optuna.Trial, space: SearchSpace, seed: int) -> TrainConfig:
    """The short training run a candidate gets: the space's trial budget and a sampled learning rate."""
    return TrainConfig(
        epochs=space.trial.epochs,
        max_lr=trial.suggest_float("max_lr", *space.training.max_lr, log=True),
        batch_size=space.training.batch_size,
        weight_decay=space.training.weight_decay,
        reports_per_epoch=space.trial.reports_per_epoch,
        seed=seed + trial.number,
    )


TrainFn = Callable[..., list[Report]]


@dataclass
class Objective:
    """Optuna objective: budget check first, then a short training run reporting to the pruner."""

    space: SearchSpace
    data: Dataset
    seed: int
    train_fn: TrainFn = train  # replaceable so a test can spy on what reaches training

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        genome = sample_genome(trial, self.space.architecture)
        params = param_count(genome)
        trial.set_user_attr("genome", genome.to_dict())
        trial.set_user_attr("params", params)
        trial.set_constraint(BUDGET_CONSTRAINT, params - self.space.max_params)
        if params > self.space.max_params:
            trial.set_user_attr("prune_reason", "over budget")
            raise optuna.TrialPruned(f"{params:,} parameters > budget {self.space.max_params:,}")
        trial.set_user_attr("macs", count_macs(genome))
        config = trial_config(trial, self.space, self.seed)
        torch.manual_seed(config.seed)  # weight initialisation
        model = with_normalisation(build_model(genome), self.data.mean, self.data.std)

        final_step = config.epochs * config.reports_per_epoch

        def on_report(report: Report) -> None:
            trial.report(report.val_accuracy, report.step)
            trial.set_user_attr("epochs_run", round(report.epoch, 3))
            # Stopping at the final report saves nothing and would discard a finished result.
            if report.step < final_step and trial.should_prune():
                trial.set_user_attr("prune_reason", "pruner")
                raise optuna.TrialPruned(f"pruned at epoch {report.epoch:.2f}")

        reports = self.train_fn(model, self.data, config, on_report)
        return reports[-1].val_accuracy


def run_trials(study: optuna.Study, objective: Objective, claim: Callable[[], bool]) -> None:
    """Ask, evaluate and tell trials while `claim` grants another; the loop one worker runs.

    Unlike `study.optimize`, a trial slot is claimed before the trial exists, so N workers
    sharing one counter run exactly the requested number of trials between them.
    """
    while claim():
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except DivergedError as error:
            trial.set_user_attr("fail_reason", str(error))
            study.tell(trial, state=TrialState.FAIL)
        except BaseException:
            trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)


class TrialSlots:
    """A counter of trials still to start, shared by the worker processes of one run."""

    def __init__(self, n: int, context: Any = mp) -> None:
        self._left = context.Value("i", n)

    def claim(self) -> bool:
        with self._left.get_lock():
            if self._left.value <= 0:
                return False
            self._left.value -= 1
            return True


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """A URL with a scheme is a database (RDB); anything else is a journal file path.

    A journal file takes concurrent writers on one host (SQLite does not) and
    optuna-dashboard opens it directly.
    """
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as error:  # SQLAlchemy raises many types for a bad URL or server
            raise UserError(f"cannot open storage {redact(url)} ({type(error).__name__}); check --storage") from None
    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except OSError as error:
        raise UserError(f"cannot write the study journal {path} ({error.strerror}); check --storage") from None


def redact(url: str) -> str:
    """The URL with any password replaced, fit to print."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def make_pruner(name: str, space: SearchSpace) -> optuna.pruners.BasePruner:
    """Stop weak trials early: at each report their accuracy is compared with finished trials."""
    steps = space.trial.epochs * space.trial.reports_per_epoch
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(options: SearchOptions, space: SearchSpace) -> optuna.Study:
    """Create the study or resume it; a study made with a different space is refused."""
    storage = make_storage(options.storage)
    sampler = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, constant_liar=True)
    pruner = make_pruner(options.pruner, space)
    try:  # load first: create_study(load_if_exists=True) appends to a journal even when the study exists
        study = optuna.load_study(study_name=options.study, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(
            study_name=options.study, storage=storage, direction="maximize", sampler=sampler, pruner=pruner
        )
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None:
        study.set_user_attr("space_sha256", space.sha256)
        study.set_user_attr("space_path", space.path)
        study.set_user_attr("max_params", space.max_params)
        study.set_user_attr("seed", options.seed)
    elif recorded != space.sha256 or study.user_attrs.get("max_params") != space.max_params:
        raise UserError(
            f"study {options.study!r} in {redact(options.storage)} was made with another search space "
            f"or budget ({study.user_attrs.get('space_path')}, max {study.user_attrs.get('max_params'):,}); "
            "pass the same --space/--max-params, or a new --study name"
        )
    return study


@dataclass(frozen=True)
class SearchOptions:
    """Everything a search run needs, as parsed from the command line."""

    trials: int
    space: Path
    max_params: int | None
    trial_epochs: int | None
    seed: int
    data_dir: Path | None
    val_size: int
    storage: str
    study: str
    pruner: str
    jobs: int
    threads: int
    timeout: float | None
    out: Path


def _worker(index: int, options: SearchOptions, space: SearchSpace, slots: TrialSlots, deadline: float | None) -> None:
    """One process of a run: its own data copy, its own thread budget, the shared study."""
    _die_with_parent()
    torch.set_num_threads(options.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset(options.data_dir, options.val_size, options.seed, include_test=False)
    study = optuna.load_study(
        study_name=options.study,
        storage=make_storage(options.storage),
        sampler=optuna.samplers.TPESampler(seed=options.seed + index, multivariate=True, constant_liar=True),
        pruner=make_pruner(options.pruner, space),
    )

    def claim() -> bool:
        return (deadline is None or time.time() < deadline) and slots.claim()

    try:
        run_trials(study, Objective(space, data, options.seed), claim)
    except KeyboardInterrupt:
        pass  # the trial was recorded as failed; the parent reports and exits


def _die_with_parent() -> None:
    """Ask Linux to end this worker if the search process dies (even by kill -9)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a dead worker on this host as failed; return how many.

    A journal file has no heartbeat, but each trial records the host and pid of its worker.
    """
    orphaned = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "worker died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
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


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome, telling budget rejections apart from the pruner's stops."""
    counts = dict.fromkeys(("running", "complete", "over budget", "pruned", "failed"), 0)
    for trial in trials:
        if trial.state == TrialState.PRUNED:
            key = "over budget" if trial.user_attrs.get("prune_reason") == "over budget" else "pruned"
        else:
            key = {TrialState.RUNNING: "running", TrialState.COMPLETE: "complete"}.get(trial.state, "failed")
        counts[key] += 1
    return counts


def progress_table(trials: list[FrozenTrial], started_with: int, requested: int, elapsed: float) -> Table:
    """The live view: trial i/N of this run, counts by outcome, best so far."""
    done = sum(t.state.is_finished() for t in trials[started_with:])
    counts = count_states(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    table = Table.grid(padding=(0, 2))
    table.add_row("trials", f"{done}/{requested} this run, {len(trials)} in study", f"{elapsed:,.0f} s")
    table.add_row("outcomes", ", ".join(f"{n} {k}" for k, n in counts.items()))
    if complete:
        best = max(complete, key=lambda t: t.value)
        table.add_row(
            "best",
            f"#{best.number}: {best.value:.2f}% val, {best.user_attrs['params']:,} params",
            Genome.from_dict(best.user_attrs["genome"]).describe(),
        )
    return table


def top_trials_table(trials: list[FrozenTrial], top: int = 10) -> Table:
    """The end-of-run summary: the best completed trials."""
    table = Table(title=f"Top {top} trials by validation accuracy")
    for column in ("#", "val acc %", "params", "MACs", "epochs", "max lr", "architecture"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    for t in complete[:top]:
        table.add_row(
            str(t.number),
            f"{t.value:.2f}",
            f"{t.user_attrs['params']:,}",
            f"{t.user_attrs['macs']:,}",
            f"{t.user_attrs.get('epochs_run', 0):g}",
            f"{t.params['max_lr']:.3f}",
            Genome.from_dict(t.user_attrs["genome"]).describe(),
        )
    return table


def trials_csv(trials: list[FrozenTrial]) -> str:
    """Every trial: number, state, params, MACs, validation accuracy, epochs run, why pruned or failed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "params", "macs", "val_accuracy", "epochs_run", "reason", "architecture"])
    for t in trials:
        attrs = t.user_attrs
        genome = Genome.from_dict(attrs["genome"]).describe() if "genome" in attrs else ""
        reason = attrs.get("prune_reason") or attrs.get("fail_reason") or ""
        value = f"{t.value:.2f}" if t.value is not None else ""
        writer.writerow(
            [
                t.number,
                t.state.name,
                attrs.get("params", ""),
                attrs.get("macs", ""),
                value,
                attrs.get("epochs_run", ""),
                reason,
                genome,
            ]
        )
    return buffer.getvalue()


def best_record(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> dict:
    """best.json: the winner and everything needed to retrain it and to say how it was found."""
    best = study.best_trial
    return {
        "study": study.study_name,
        "trial": best.number,
        "genome": best.user_attrs["genome"],
        "params": best.user_attrs["params"],
        "macs": best.user_attrs["macs"],
        "max_params": space.max_params,
        "val_accuracy": best.value,
        "trial_epochs": space.trial.epochs,
        "train": {
            "max_lr": best.params["max_lr"],
            "batch_size": space.training.batch_size,
            "weight_decay": space.training.weight_decay,
        },
        # null: the MNIST copy bundled with the package, wherever the project lives.
        "data": {
            "dir": str(options.data_dir.resolve()) if options.data_dir else None,
            "val_size": options.val_size,
            "split_seed": options.seed,
        },
        "space": {"path": space.path, "sha256": space.sha256, "text": Path(space.path).read_text()},
        "seed": options.seed,
        "command": "python -m nas.search " + " ".join(sys.argv[1:]),
        "versions": results.versions(),
    }


def search(options: SearchOptions, console: Console | None = None) -> optuna.Study:
    """Run `options.trials` more trials on the study, then write best.json and trials.csv."""
    console = console or Console()
    space = load_space(options.space, options.max_params, options.trial_epochs)
    # Load once up front: bad data fails here, before any worker starts or trial is created.
    load_dataset(options.data_dir, options.val_size, options.seed, include_test=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(options, space)
    orphaned = fail_orphaned_trials(study)
    if orphaned:
        console.print(f"marked {orphaned} trial(s) of a dead worker as failed")
    started_with = len(study.trials)
    console.print(
        f"study [bold]{options.study}[/] in {redact(options.storage)}: {started_with} trials so far; "
        f"running {options.trials} more with {options.jobs} job(s), budget {space.max_params:,} params"
    )
    deadline = time.time() + options.timeout if options.timeout else None
    context = mp.get_context("spawn")  # fork would share torch's thread pools between workers
    slots = TrialSlots(options.trials, context)
    workers = [
        context.Process(target=_worker, args=(i, options, space, slots, deadline), daemon=True)
        for i in range(options.jobs)
    ]
    start = time.time()
    interrupted = False
    with Live(console=console, refresh_per_second=1) as live:
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                live.update(progress_table(study.trials, started_with, options.trials, time.time() - start))
                time.sleep(1.0)
        except KeyboardInterrupt:
            interrupted = True  # the workers got the same signal; they record their trials as failed
        for worker in workers:
            worker.join()
        live.update(progress_table(study.trials, started_with, options.trials, time.time() - start))
    _report(study, space, options, console)
    if interrupted:
        raise KeyboardInterrupt
    return study


def _report(study: optuna.Study, space: SearchSpace, options: SearchOptions, console: Console) -> None:
    trials = study.trials
    out = options.out
    results.write_text(out / "trials.csv", trials_csv(trials))
    if not any(t.state == TrialState.COMPLETE for t in trials):
        console.print("[yellow]no trial completed yet, so no best.json; run the command again to continue[/]")
        return
    console.print(top_trials_table(trials))
    best_path = out / "best.json"
    results.write_json(best_path, best_record(study, space, options))
    console.print(f"wrote {best_path} and {out / 'trials.csv'}; study journal: {redact(options.storage)}")
    console.print(f"next: python -m nas.retrain {best_path} --epochs 19")


def parse_args(argv: list[str] | None) -> SearchOptions:
    parser = argparse.ArgumentParser(prog="nas.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trials to add to the study (default 50)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search-space TOML file")
    parser.add_argument("--max-params", type=int, help="parameter budget (overrides the space file)")
    parser.add_argument("--trial-epochs", type=int, help="training epochs per trial (overrides the space file)")
    parser.add_argument("--seed", type=int, default=0, help="sampler, validation split and training seed")
    parser.add_argument("--data-dir", type=Path, help="directory with the four MNIST-format IDX files")
    parser.add_argument("--val-size", type=int, default=10_000, help="training images held out for validation")
    parser.add_argument("--study", help="study name (default: the space file's name)")
    parser.add_argument("--storage", help="journal file path or database URL (default results/<study>/study.journal)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: cores / jobs)")
    parser.add_argument("--out", type=Path, help="result folder (default results/<study>)")
    args = parser.parse_args(argv)
    for name in ("trials", "jobs", "val_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("trial_epochs", "threads", "max_params", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    study = args.study or args.space.stem
    out = args.out or RESULTS_DIR / study
    return SearchOptions(
        trials=args.trials,
        space=args.space,
        max_params=args.max_params,
        trial_epochs=args.trial_epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        val_size=args.val_size,
        storage=args.storage or str(out / "study.journal"),
        study=study,
        pruner=args.pruner,
        jobs=args.jobs,
        threads=args.threads or max(1, (os.cpu_count() or 1) // args.jobs),
        timeout=args.timeout,
        out=out,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        search(options)
    except KeyboardInterrupt:
        print(
            f"interrupted; completed trials are saved. Resume with: python -m nas.search {' '.join(sys.argv[1:])}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
