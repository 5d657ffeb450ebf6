"""What a search shows and leaves behind: the live table, log lines, trials.csv, search.png, best.json.

Every trial is read through nas.trials.TrialRecord, never through Optuna's attribute keys.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table

from nas import plots, results
from nas.best import Best, DataSplit, space_record
from nas.objective import RECIPE_KNOBS
from nas.space import SearchSpace
from nas.study import redact
from nas.trials import OUTCOMES, TrialRecord, best_first

if TYPE_CHECKING:
    from nas.search import SearchOptions

CSV_COLUMNS = (
    "number", "outcome", "params", "macs", "val_accuracy", "epochs_run", "train_seconds", "estimated_retrain_seconds",
    "fail_reason",
    *RECIPE_KNOBS, "known_design", "mutation", "architecture",
)  # fmt: skip


def records(trials: list[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.of(trial) for trial in trials]


def count_states(trials: list[TrialRecord]) -> dict[str, int]:
    """Trials by outcome, telling budget rejections apart from the pruner's stops."""
    counts = Counter(trial.outcome for trial in trials)
    return {outcome: counts[outcome] for outcome in OUTCOMES}


def trial_line(trial: TrialRecord, elapsed: float) -> str:
    """One finished trial, for logs: number, outcome, accuracy, size."""
    value = f"{trial.accuracy:.2f}%" if trial.accuracy is not None else "-"
    why = trial.fail_reason or trial.budget_exceeded
    reason = f" ({why})" if why else ""
    size = f", {trial.params:,} params" if trial.params is not None else ""
    origin = f", known design {trial.known_design}" if trial.known_design else ""
    origin += f", mutation {trial.mutation}" if trial.mutation else ""
    return f"[{elapsed:6.0f} s] trial {trial.number}: {trial.outcome}{reason}, val {value}{size}{origin}"


def progress_table(trials: list[TrialRecord], finished_before: set[int], requested: int, elapsed: float) -> Table:
    """The live view: trial i/N of this run, counts by outcome, best so far."""
    done = sum(t.finished and t.number not in finished_before for t in trials)
    table = Table.grid(padding=(0, 2))
    table.add_row("trials", f"{done}/{requested} this run, {len(trials)} in study", f"{elapsed:,.0f} s")
    table.add_row("outcomes", ", ".join(f"{n} {k}" for k, n in count_states(trials).items()))
    complete = best_first(trials)
    if complete:
        best = complete[0]
        table.add_row(
            "best", f"#{best.number}: {best.accuracy:.2f}% val, {best.params:,} params", best.genome.describe()
        )
    return table


def top_trials_table(trials: list[TrialRecord], top: int = 10) -> Table:
    """The end-of-run summary: the best completed trials."""
    table = Table(title=f"Top {top} trials by validation accuracy")
    for column in ("#", "val acc %", "params", "MACs", "epochs", "max lr", "architecture"):
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for t in best_first(trials)[:top]:
        table.add_row(
            str(t.number), f"{t.accuracy:.2f}", f"{t.params:,}", f"{t.macs:,}", f"{t.epochs_run or 0:g}",
            f"{t.recipe.max_lr:.3f}" if t.recipe else "", t.genome.describe(),
        )  # fmt: skip
    return table


def trials_csv(trials: list[TrialRecord]) -> str:
    """Every trial: number, outcome, size, validation accuracy, epochs and seconds trained, why it failed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for t in trials:
        writer.writerow([
            t.number, t.outcome, _blank(t.params), _blank(t.macs),
            f"{t.accuracy:.2f}" if t.accuracy is not None else "", _blank(t.epochs_run), _blank(t.train_seconds),
            _blank(t.estimated_retrain_seconds), t.fail_reason,
            *(_blank(t.recipe and getattr(t.recipe, knob)) for knob in RECIPE_KNOBS),
            _blank(t.known_design), _blank(t.mutation), t.genome.describe() if t.genome else "",
        ])  # fmt: skip
    return buffer.getvalue()


def _blank(value: object) -> object:
    return "" if value is None else value


def plot_rows(trials: list[TrialRecord]) -> list[dict]:
    """The finished trials that were sized, in the form nas.plots takes."""
    return [
        {"number": t.number, "params": t.params, "outcome": t.outcome, "accuracy": t.accuracy}
        for t in trials
        if t.finished and t.params is not None
    ]


def best_of(study: optuna.Study, space: SearchSpace, options: SearchOptions) -> Best:
    """The winner, everything needed to retrain it, and how it was found."""
    best = TrialRecord.of(study.best_trial)
    return Best(
        genome=best.genome,
        max_params=space.max_params,
        recipe=best.recipe,
        data=DataSplit(
            dir=str(options.data_dir.resolve()) if options.data_dir else None,
            val_size=options.val_size,
            split_seed=options.seed,
        ),
        found={
            "study": study.study_name,
            "trial": best.number,
            "macs": best.macs,
            "val_accuracy": best.accuracy,
            "trial_epochs": space.trial.epochs,
            "space": space_record(space),
            "seed": options.seed,
            "command": results.command_line(),
            "versions": results.versions(),
        },
    )


def write_report(study: optuna.Study, space: SearchSpace, options: SearchOptions, console: Console) -> None:
    """trials.csv always; with a completed trial, best.json and search.png too."""
    trials = records(study.trials)
    out = options.out
    results.write_text(out / "trials.csv", trials_csv(trials))
    if not best_first(trials):
        if trials and all(t.outcome in ("over budget", "infeasible") for t in trials):
            console.print(
                f"[yellow]no trial completed, so no best.json: all {len(trials)} were over budget or no network; "
                "loosen the budgets (see trials.csv for by how much) or narrow the space to what fits[/]"
            )
        else:
            console.print("[yellow]no trial completed yet, so no best.json; run the command again to continue[/]")
        return
    console.print(top_trials_table(trials))
    best_path = out / "best.json"
    best_of(study, space, options).write(best_path)
    plots.plot_search(plot_rows(trials), space.max_params, out / "search.png")
    console.print(f"wrote {best_path}, trials.csv and search.png to {out}; study: {redact(options.storage)}")
    console.print(f"next: python -m nas.retrain {best_path}")
