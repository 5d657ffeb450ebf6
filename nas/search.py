"""The search: an Optuna study over a search space, under hard budgets. Its command line and its workers.

    python -m nas.search --trials 50

Each worker process runs trials of the shared study (nas.objective) until the run's count is
used up; the parent shows progress, notices dead workers, and writes the report (nas.report).
Optuna is touched on this side only (nas.objective, nas.study, nas.trials, nas.report, here);
the trainer knows nothing of it.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from rich.console import Console
from rich.live import Live

from nas import machine, results
from nas.data import Dataset, load_dataset
from nas.errors import ArgumentParser, UserError, cli
from nas.machine import add_precision_option
from nas.objective import Objective, check_retrain_reachable
from nas.processes import DEFAULT_JOBS, die_with_parent, spawn, threads_per_process
from nas.report import progress_table, records, trial_line, write_report
from nas.space import DEFAULT_SPACE, SearchSpace, load_space
from nas.study import (
    PARENTS,
    PRUNERS,
    UNCLAIMED_SECONDS,
    fail_orphaned_trials,
    is_database,
    load_study,
    make_storage,
    open_study,
    queue_mutant,
    redact,
    repair_journal,
)
from nas.train import DivergedError
from nas.trials import TrialRecord

# A user's runs go here, git-ignored; results/ holds the shipped records and changes only on purpose.
RUNS_DIR = Path("runs")
DEFAULT_MUTATION_SHARE = 0.5


def run_trials(
    study: optuna.Study, objective: Objective, claim: Callable[[], bool], propose: Callable[[], object] = lambda: None
) -> None:
    """Run trials one at a time while `claim` grants another: the loop each worker runs.

    A slot is claimed before its trial exists, so N workers sharing one counter run exactly the
    requested number of trials between them. `propose` may enqueue the next trial first (a
    mutation); otherwise the sampler draws it. `study.optimize` runs each one, keeping Optuna's
    bookkeeping: heartbeats, stale-trial retries, a trial told FAIL when it is interrupted.
    """
    while claim():
        propose()
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
    max_retrain_seconds: float | None = None  # overrides the space's retrain.max_seconds
    precision: str = "auto"  # TrainConfig.precision
    known_designs: bool = True  # a new study starts with the known designs (scaled to its budget)
    mutation_share: float = DEFAULT_MUTATION_SHARE  # trials that mutate one of the best so far (nas.mutation)


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
    study = load_study(options.study, make_storage(options.storage), space, options.pruner, options.seed + index)

    def claim() -> bool:
        return_freed_memory()
        return (deadline is None or time.time() < deadline) and slots.claim()

    rng = random.Random(f"{options.seed}/{index}")

    def propose() -> None:
        if rng.random() < options.mutation_share:
            queue_mutant(study, space, rng)

    try:
        run_trials(study, Objective(space, data, options.seed, options.precision), claim, propose)
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


def search(options: SearchOptions, console: Console | None = None) -> optuna.Study:
    """Run `options.trials` more trials on the study, then write best.json and trials.csv."""
    console = console or Console(soft_wrap=True)  # long lines stay whole in log files
    space = load_space(
        options.space, options.max_params, options.trial_epochs, options.max_macs, options.max_retrain_seconds
    )
    results.check_writable(options.out)
    # Timed here, once, before the workers start: they read the cached figures instead of
    # timing each other's load.
    machine.profile(announce=console.print)
    # Loaded once, here: bad data fails before any worker starts or trial is created, and the
    # workers share these tensors (pickled for a spawned process, they move to shared memory).
    data = load_dataset(options.data_dir, options.val_size, options.seed, include_test=False)
    check_retrain_reachable(space, data, options.precision)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    repaired = repair_journal(options.storage)
    if repaired:
        console.print(repaired)
    study = open_study(options.study, options.storage, space, options.pruner, options.seed, options.known_designs)
    orphaned = fail_orphaned_trials(study, options.storage)
    if orphaned:
        console.print(f"marked {orphaned} trial(s) of a dead worker as failed")
    # The known designs a new study enqueues are trials already, but this run is the one to run them.
    finished_before = {t.number for t in records(study.trials) if t.finished}
    console.print(
        f"study [bold]{options.study}[/] in {redact(options.storage)}: {len(finished_before)} trials so far; "
        f"running {options.trials} more with {options.jobs} job(s), budget {space.max_params:,} params"
        + (f" and {space.max_macs:,} MACs" if space.max_macs else "")
    )
    timeout = options.timeout or space.search_seconds
    deadline = time.time() + timeout if timeout else None
    slots = TrialSlots(options.trials, spawn)
    workers = [
        spawn.Process(target=_worker, args=(i, options, space, data, slots, deadline), daemon=True)
        for i in range(options.jobs)
    ]
    start = time.time()
    interrupted = False
    logged = set(finished_before)

    def log_finished(trials: list[TrialRecord]) -> None:
        """A log file gets a line per finished trial (a terminal has the live table)."""
        if console.is_terminal:
            return
        for trial in trials:
            if trial.finished and trial.number not in logged:
                console.print(trial_line(trial, time.time() - start))
                logged.add(trial.number)

    with Live(console=console, refresh_per_second=1) as live:
        for worker in workers:
            worker.start()
        dead: set[int] = set()
        try:
            while any(w.is_alive() for w in workers):
                for index, worker in enumerate(workers):
                    if worker.exitcode not in (None, 0) and index not in dead:  # killed, or out of memory
                        dead.add(index)
                        failed = fail_orphaned_trials(study, options.storage)
                        console.print(
                            f"[red]worker {index} died (exit code {worker.exitcode})[/]; its running trial "
                            f"marked failed ({failed}), the other workers go on"
                        )
                trials = records(study.get_trials(deepcopy=False))  # polled every second: read, never modified
                live.update(progress_table(trials, finished_before, options.trials, time.time() - start))
                log_finished(trials)
                time.sleep(1.0)
        except KeyboardInterrupt:
            interrupted = True
            for worker in workers:
                worker.terminate()  # SIGTERM: the worker records its running trial as failed and exits
        for worker in workers:
            worker.join()
        if not is_database(options.storage) and any(worker.exitcode != 0 for worker in workers):
            # A worker killed just as Optuna created its trial left one that names no worker yet.
            time.sleep(UNCLAIMED_SECONDS)
            fail_orphaned_trials(study, options.storage)
        trials = records(study.trials)
        log_finished(trials)  # those that finished after the last poll
        live.update(progress_table(trials, finished_before, options.trials, time.time() - start))
    write_report(study, space, options, console)
    if interrupted:
        raise KeyboardInterrupt
    return study


def parse_args(argv: list[str] | None) -> SearchOptions:
    parser = ArgumentParser(prog="nas.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trials to add to the study (default 50)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="stop starting trials after this many seconds (default: the space's search_seconds)",
    )
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search-space TOML file")
    parser.add_argument("--max-params", type=int, help="parameter budget (overrides the space file)")
    parser.add_argument("--max-macs", type=int, help="multiply-accumulates per image (overrides the space file)")
    parser.add_argument(
        "--max-retrain-seconds",
        type=float,
        help="prune a candidate whose retrain would take longer on this machine, estimated from a few timed steps "
        "before it trains (overrides the space file's retrain.max_seconds)",
    )
    parser.add_argument("--trial-epochs", type=int, help="training epochs per trial (overrides the space file)")
    parser.add_argument("--seed", type=int, default=0, help="sampler, validation split and training seed")
    parser.add_argument("--data-dir", type=Path, help="directory with the four MNIST-format IDX files")
    parser.add_argument("--val-size", type=int, default=10_000, help="training images held out for validation")
    parser.add_argument("--study", help="study name (default: the space file's name)")
    parser.add_argument("--storage", help="journal file path or database URL (default runs/<study>/study.journal)")
    parser.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="staged",
        help="staged (default): after the first epoch stop only the bottom quarter, then below the median; "
        "median: below the median from the first epoch",
    )
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="worker processes")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: cores / jobs)")
    add_precision_option(parser)
    parser.add_argument("--out", type=Path, help="result folder (default runs/<study>)")
    parser.add_argument(
        "--no-known-designs",
        dest="known_designs",
        action="store_false",
        help="do not start a new study with the published designs (nas/known_designs.json), each scaled to "
        "the widest that fits",
    )
    parser.add_argument(
        "--mutation-share",
        type=float,
        default=DEFAULT_MUTATION_SHARE,
        help="share of trials that mutate one of the best so far instead of drawing from the space, once "
        f"{PARENTS} trials have completed; 0 turns mutation off (default {DEFAULT_MUTATION_SHARE})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.mutation_share <= 1:
        raise UserError(f"--mutation-share must lie in [0, 1], got {args.mutation_share}")
    for name in ("trials", "jobs", "val_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("trial_epochs", "threads", "max_params", "max_macs", "max_retrain_seconds", "timeout"):
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
        max_retrain_seconds=args.max_retrain_seconds,
        precision=args.precision,
        known_designs=args.known_designs,
        mutation_share=args.mutation_share,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        search(options)
    except KeyboardInterrupt:
        print(
            f"interrupted; completed trials are saved. Resume with: {results.command_line()}",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
