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
import warnings
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

from nas import journal, machine, plots, results
from nas.data import Dataset, load_dataset
from nas.errors import UserError, cli
from nas.genome import Genome, Stage, param_count
from nas.machine import PRECISIONS
from nas.model import build_model, count_macs, with_normalisation
from nas.processes import DEFAULT_JOBS, die_with_parent, spawn, threads_per_process
from nas.space import DEFAULT_SPACE, ArchitectureSpace, SearchSpace, load_space
from nas.train import DivergedError, Report, TrainConfig, train

# A user's runs go here, git-ignored; results/ holds the shipped records and changes only on purpose.
RUNS_DIR = Path("runs")
BUDGET_CONSTRAINT = "params_over_budget"  # trial constraint: params - budget, feasible when <= 0
OBJECTIVE = "val_accuracy"  # percent on the validation split, at the trial's final report
MACS_CONSTRAINT = "macs_over_budget"  # with a MACs budget: macs - max_macs, feasible when <= 0
PRUNERS = ("median", "hyperband", "none")
# Database storages only: a trial whose worker is silent for twice this is failed and retried.
HEARTBEAT_SECONDS = int(os.environ.get("NAS_HEARTBEAT_SECONDS", "30"))
DATABASE_ATTEMPTS = 3


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


def trial_config(trial: optuna.Trial, space: SearchSpace, seed: int, precision: str = "auto") -> TrainConfig:
    """The short training run a candidate gets: the space's trial budget and a sampled learning rate.

    One process per trial: the search's parallelism is its worker processes.
    """
    return TrainConfig(
        epochs=space.trial.epochs,
        max_lr=trial.suggest_float("max_lr", *space.training.max_lr, log=True),
        batch_size=space.training.batch_size,
        weight_decay=space.training.weight_decay,
        reports_per_epoch=space.trial.reports_per_epoch,
        seed=seed + trial.number,
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
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        peak = worker_peak_rss_mib()
        if peak is not None:  # recorded per trial, so memory growth across trials shows in the study
            trial.set_user_attr("worker_peak_rss_mib", peak)
        genome = sample_genome(trial, self.space.architecture)
        params = param_count(genome)
        trial.set_user_attr("genome", genome.to_dict())
        trial.set_user_attr("params", params)
        trial.set_constraint(BUDGET_CONSTRAINT, params - self.space.max_params)
        if params > self.space.max_params:
            trial.set_user_attr("prune_reason", "over budget")
            raise optuna.TrialPruned(f"{params:,} parameters > budget {self.space.max_params:,}")
        macs = count_macs(genome)
        trial.set_user_attr("macs", macs)
        if self.space.max_macs is not None:
            trial.set_constraint(MACS_CONSTRAINT, macs - self.space.max_macs)
            if macs > self.space.max_macs:
                trial.set_user_attr("prune_reason", "over budget")
                raise optuna.TrialPruned(f"{macs:,} MACs > budget {self.space.max_macs:,}")
        config = trial_config(trial, self.space, self.seed, self.precision)
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

        start = time.perf_counter()
        try:
            reports = self.train_fn(model, self.data, config, on_report)
        except DivergedError as error:
            trial.set_user_attr("fail_reason", str(error))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        finally:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 1))
        return reports[-1].val_accuracy


def worker_peak_rss_mib() -> int | None:
    """This process's peak resident memory since it started (Linux's VmHWM), MiB; None elsewhere."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kib) // 1024 if kib else None


def run_trials(study: optuna.Study, objective: Objective, claim: Callable[[], bool]) -> None:
    """Run trials one at a time while `claim` grants another: the loop each worker runs.

    A slot is claimed before its trial exists, so N workers sharing one counter run exactly the
    requested number of trials between them. `study.optimize` runs each one, keeping Optuna's
    bookkeeping: heartbeats, stale-trial retries, a trial told FAIL when it is interrupted.
    """
    while claim():
        study.optimize(objective, n_trials=1, catch=(DivergedError,), gc_after_trial=False)


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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


def make_pruner(name: str, space: SearchSpace) -> optuna.pruners.BasePruner:
    """Stop weak trials early: at each report their accuracy is compared with finished trials.

    Not before one full epoch: under the one-cycle warm-up, the trials with the highest peak
    learning rate look worst at first (seen here: 96.2% at half an epoch, then the study's best).
    """
    steps = space.trial.epochs * space.trial.reports_per_epoch
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=space.trial.reports_per_epoch)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=space.trial.reports_per_epoch, max_resource=steps, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def load_study(
    options: SearchOptions, space: SearchSpace, sampler_seed: int, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """The study named in `options`; KeyError if it does not exist yet."""
    return optuna.load_study(
        study_name=options.study,
        storage=storage,
        # constant_liar: workers sharing a study do not all sample around the same running trial.
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True, constant_liar=True),
        pruner=make_pruner(options.pruner, space),
    )


def open_study(options: SearchOptions, space: SearchSpace) -> optuna.Study:
    """Create the study or resume it; a study made with a different space is refused."""
    storage = make_storage(options.storage)
    try:  # load first: create_study(load_if_exists=True) appends to a journal even when the study exists
        study = load_study(options, space, options.seed, storage)
    except KeyError:
        try:
            created = optuna.create_study(study_name=options.study, storage=storage, direction="maximize")
            created.set_metric_names([OBJECTIVE])  # optuna-dashboard's name for the value
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process, here or on another machine, created it first
        study = load_study(options, space, options.seed, storage)
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None:
        study.set_user_attr("space_sha256", space.sha256)
        study.set_user_attr("space_path", space.path)
        study.set_user_attr("max_params", space.max_params)
        study.set_user_attr("max_macs", space.max_macs)
        study.set_user_attr("seed", options.seed)
    elif (recorded, study.user_attrs.get("max_params"), study.user_attrs.get("max_macs")) != (
        space.sha256,
        space.max_params,
        space.max_macs,
    ):
        raise UserError(
            f"study {options.study!r} in {redact(options.storage)} was made with another search space "
            f"or budget ({study.user_attrs.get('space_path')}, max {study.user_attrs.get('max_params'):,} params, "
            f"max MACs {study.user_attrs.get('max_macs')}); pass the same --space/--max-params/--max-macs, "
            "or a new --study name"
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
    max_macs: int | None = None
    precision: str = "auto"  # TrainConfig.precision


def _worker(
    index: int, options: SearchOptions, space: SearchSpace, data: Dataset, slots: TrialSlots, deadline: float | None
) -> None:
    """One process of a run: the parent's data (in shared memory), its own thread budget, the shared study."""
    die_with_parent()
    # Ctrl-C reaches the whole process group; only the parent acts on it, then stops each worker
    # once with SIGTERM, so a second signal cannot cut a worker off while it records its trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    torch.set_num_threads(options.threads)
    # Optuna would log each failed trial with a traceback; the parent prints one line per trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = load_study(options, space, options.seed + index, make_storage(options.storage))

    def claim() -> bool:
        return_freed_memory()
        return (deadline is None or time.time() < deadline) and slots.claim()

    try:
        run_trials(study, Objective(space, data, options.seed, options.precision), claim)
    except KeyboardInterrupt:
        pass  # Optuna told the trial FAIL; the parent reports and exits


def return_freed_memory() -> None:
    """Hand memory that Python and torch freed back to the OS (glibc keeps it otherwise).

    Measured on a 50-trial mnist_8k search: the process tree's peak PSS fell from 2,014 to 1,931 MiB.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None).malloc_trim(0)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def fail_orphaned_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a dead worker on this host as failed; return how many.

    A journal file has no heartbeat, but each trial records the host and pid of its worker.
    """
    orphaned = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)  # its reason: see fail_reason()
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


def outcome(trial: FrozenTrial) -> str:
    """running, complete, over budget (never trained), pruned (by the pruner) or failed."""
    if trial.state == TrialState.PRUNED:
        return "over budget" if trial.user_attrs.get("prune_reason") == "over budget" else "pruned"
    return {TrialState.RUNNING: "running", TrialState.COMPLETE: "complete"}.get(trial.state, "failed")


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by outcome, telling budget rejections apart from the pruner's stops."""
    counts = dict.fromkeys(("running", "complete", "over budget", "pruned", "failed"), 0)
    for trial in trials:
        counts[outcome(trial)] += 1
    return counts


def fail_reason(trial: FrozenTrial) -> str:
    """Why a trial failed, as its worker recorded it; a failed trial with no record lost its worker."""
    if trial.state != TrialState.FAIL:
        return ""
    return trial.user_attrs.get("fail_reason", "worker died")


def last_accuracy(trial: FrozenTrial) -> float | None:
    """The final value of a completed trial, the last report of a pruned one, else None."""
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def trial_line(trial: FrozenTrial, elapsed: float) -> str:
    """One finished trial, for logs: number, outcome, accuracy, size."""
    accuracy = last_accuracy(trial)
    value = f"{accuracy:.2f}%" if accuracy is not None else "-"
    reason = f" ({fail_reason(trial)})" if trial.state == TrialState.FAIL else ""
    params = trial.user_attrs.get("params", 0)
    return f"[{elapsed:6.0f} s] trial {trial.number}: {outcome(trial)}{reason}, val {value}, {params:,} params"


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


CSV_COLUMNS = (
    "number", "outcome", "params", "macs", "val_accuracy", "epochs_run", "train_seconds", "fail_reason", "architecture",
)  # fmt: skip


def trials_csv(trials: list[FrozenTrial]) -> str:
    """Every trial: number, outcome, size, validation accuracy, epochs and seconds trained, why it failed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in trials:
        attrs = t.user_attrs
        accuracy = last_accuracy(t)
        writer.writerow([
            t.number,
            outcome(t),
            attrs.get("params", ""),
            attrs.get("macs", ""),
            f"{accuracy:.2f}" if accuracy is not None else "",
            attrs.get("epochs_run", ""),
            attrs.get("train_seconds", ""),
            fail_reason(t),
            Genome.from_dict(attrs["genome"]).describe() if "genome" in attrs else "",
        ])  # fmt: skip
    return buffer.getvalue()


def plot_rows(trials: list[FrozenTrial]) -> list[dict]:
    """The finished trials in the form nas.plots takes."""
    return [
        {"number": t.number, "params": t.user_attrs["params"], "outcome": outcome(t), "accuracy": last_accuracy(t)}
        for t in trials
        if t.state.is_finished() and "params" in t.user_attrs
    ]


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
        "space": {"path": space.path, "sha256": space.sha256, "text": space.text},
        "seed": options.seed,
        "command": "python -m nas.search " + " ".join(sys.argv[1:]),
        "versions": results.versions(),
    }


def search(options: SearchOptions, console: Console | None = None) -> optuna.Study:
    """Run `options.trials` more trials on the study, then write best.json and trials.csv."""
    console = console or Console(soft_wrap=True)  # long lines stay whole in log files
    space = load_space(options.space, options.max_params, options.trial_epochs, options.max_macs)
    results.check_writable(options.out)
    # Timed here, once, before the workers start: they read the cached figures instead of
    # timing each other's load.
    machine.profile(announce=console.print)
    # Loaded once, here: bad data fails before any worker starts or trial is created, and the
    # workers share these tensors (pickled for a spawned process, they move to shared memory).
    data = load_dataset(options.data_dir, options.val_size, options.seed, include_test=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_database(options.storage):
        repaired = journal.repair(Path(options.storage))
        if repaired:
            console.print(repaired)
    study = open_study(options, space)
    # A database has heartbeats: Optuna fails and retries a dead worker's trial itself.
    orphaned = 0 if is_database(options.storage) else fail_orphaned_trials(study)
    if orphaned:
        console.print(f"marked {orphaned} trial(s) of a dead worker as failed")
    started_with = len(study.trials)
    console.print(
        f"study [bold]{options.study}[/] in {redact(options.storage)}: {started_with} trials so far; "
        f"running {options.trials} more with {options.jobs} job(s), budget {space.max_params:,} params"
        + (f" and {space.max_macs:,} MACs" if space.max_macs else "")
    )
    deadline = time.time() + options.timeout if options.timeout else None
    slots = TrialSlots(options.trials, spawn)
    workers = [
        spawn.Process(target=_worker, args=(i, options, space, data, slots, deadline), daemon=True)
        for i in range(options.jobs)
    ]
    start = time.time()
    interrupted = False
    with Live(console=console, refresh_per_second=1) as live:
        for worker in workers:
            worker.start()
        logged: set[int] = set()
        dead: set[int] = set()
        try:
            while any(w.is_alive() for w in workers):
                for index, worker in enumerate(workers):
                    if worker.exitcode not in (None, 0) and index not in dead:  # killed, or out of memory
                        dead.add(index)
                        failed = 0 if is_database(options.storage) else fail_orphaned_trials(study)
                        console.print(
                            f"[red]worker {index} died (exit code {worker.exitcode})[/]; its running trial "
                            f"marked failed ({failed}), the other workers go on"
                        )
                trials = study.get_trials(deepcopy=False)  # polled every second: read, never modified
                live.update(progress_table(trials, started_with, options.trials, time.time() - start))
                if not console.is_terminal:  # a log file gets a line per finished trial
                    for trial in trials[started_with:]:
                        if trial.state.is_finished() and trial.number not in logged:
                            console.print(trial_line(trial, time.time() - start))
                            logged.add(trial.number)
                time.sleep(1.0)
        except KeyboardInterrupt:
            interrupted = True
            for worker in workers:
                worker.terminate()  # SIGTERM: the worker records its running trial as failed and exits
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
    plots.plot_search(plot_rows(trials), space.max_params, out / "search.png")
    console.print(f"wrote {best_path}, trials.csv and search.png to {out}; study: {redact(options.storage)}")
    console.print(f"next: python -m nas.retrain {best_path} --epochs 19")


def parse_args(argv: list[str] | None) -> SearchOptions:
    parser = argparse.ArgumentParser(prog="nas.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trials to add to the study (default 50)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search-space TOML file")
    parser.add_argument("--max-params", type=int, help="parameter budget (overrides the space file)")
    parser.add_argument("--max-macs", type=int, help="multiply-accumulates per image (overrides the space file)")
    parser.add_argument("--trial-epochs", type=int, help="training epochs per trial (overrides the space file)")
    parser.add_argument("--seed", type=int, default=0, help="sampler, validation split and training seed")
    parser.add_argument("--data-dir", type=Path, help="directory with the four MNIST-format IDX files")
    parser.add_argument("--val-size", type=int, default=10_000, help="training images held out for validation")
    parser.add_argument("--study", help="study name (default: the space file's name)")
    parser.add_argument("--storage", help="journal file path or database URL (default runs/<study>/study.journal)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="worker processes")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: cores / jobs)")
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="fp32, or bf16 autocast (default auto: the faster on this CPU, measured once and cached)",
    )
    parser.add_argument("--out", type=Path, help="result folder (default runs/<study>)")
    args = parser.parse_args(argv)
    for name in ("trials", "jobs", "val_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("trial_epochs", "threads", "max_params", "max_macs", "timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    study = args.study or args.space.stem
    out = args.out or RUNS_DIR / study
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
        threads=args.threads or threads_per_process(args.jobs),
        timeout=args.timeout,
        out=out,
        max_macs=args.max_macs,
        precision=args.precision,
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
