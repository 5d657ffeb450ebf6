"""Do short trials rank architectures as full training does? Retrain trials across a study and compare.

python -m nas.rank results/mnist_8k/best.json --retrains 6 --epochs 15
python -m nas.rank results/mnist_8k/best.json --top 2 --seeds 3
python -m nas.rank results/mnist_8k/best.json --trials 2 6 --seeds 3

Takes `--retrains` completed trials spread evenly over the study's ranking (the winner and the
last included), the `--top` best, or the `--trials` named, retrains each in full on the training split only, with
seeds 0 to `--seeds` - 1, and reports the Spearman rank correlation between the trials' scores and
the retrains' final validation accuracy (the mean over the seeds): images neither the trials nor
the retrains trained on; and the same for the trials' earlier reports, a hint of whether shorter
trials would do. It names the trial that retrained best and the one to retrain in full, whose
best.json nas.retrain takes like the search's: the search's pick (the best trial score among
those retrained) unless another trial's lead over it exceeds the spread between seeds, which
takes several seeds, as one seed's lead of a few images has not held up on more seeds or on the
test set. The test set plays no part. A trial's seed 0 lands in <out>/trial<N>/, another seed S
in <out>/trial<N>/seeds/seed<S>/; one already there is read back, not trained again, so both
kinds of pick share the retrains. The summary goes to <out>/ranking.json (with --top: top.json;
with --trials 2 6: trials2-6.json). `--jobs` retrains run at once, each in a one-thread process.
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import sys
from pathlib import Path
from queue import Empty

import optuna
import torch
from rich.console import Console
from rich.table import Table

from nas import best, machine, results
from nas.errors import ArgumentParser, UserError, cli
from nas.processes import DEFAULT_JOBS, die_with_parent, spawn, start_deaf_to_ctrl_c, threads_per_process
from nas.report import records
from nas.retrain import MAX_EPOCHS, RetrainOptions, retrain
from nas.study import is_database, make_storage, redact
from nas.train import ReplicaLost
from nas.trials import TrialRecord, best_first

DEFAULT_RETRAINS = 6


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ascending; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            result[i] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("spearman needs two equally long lists of at least two values")
    rx, ry = ranks(xs), ranks(ys)
    mean = (len(xs) + 1) / 2
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    spread = (sum((a - mean) ** 2 for a in rx) * sum((b - mean) ** 2 for b in ry)) ** 0.5
    if spread == 0:
        raise ValueError("spearman is undefined when every value in a list is the same")
    return cov / spread


def pick_trials(trials: list[TrialRecord], count: int, top: bool, numbers: tuple[int, ...] = ()) -> list[TrialRecord]:
    """Completed trials, best first: those `numbers` name, else `count` best, else `count` spread over the ranking."""
    ranked = best_first(trials)
    if numbers:
        missing = sorted(set(numbers) - {trial.number for trial in ranked})
        if missing:
            raise UserError(
                f"trial {missing[0]} is not a completed trial of the study; --trials takes numbers from its ranking"
            )
        return [trial for trial in ranked if trial.number in numbers]
    if len(ranked) < max(count, 2):
        raise UserError(
            f"the study has {len(ranked)} completed trials, fewer than the {max(count, 2)} to compare; "
            f"run more trials or ask for fewer {'--top' if top else '--retrains'}"
        )
    if top:
        return ranked[:count]
    places = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)})
    return [ranked[place] for place in places]


def spearman_by_report(trials: list[TrialRecord], retrain_accuracies: list[float]) -> list[dict]:
    """How the trials' score at each of their reports, not only the last, ranks them against the retrains.

    An earlier report costs less than the whole trial, but is not what a shorter trial would score:
    there the one-cycle learning rate, which spans the whole trial, was still high.
    """
    reports = min(len(trial.reports) for trial in trials)
    epochs_per_report = trials[0].epochs_run / len(trials[0].reports)
    by_report = []
    for index in range(reports):
        try:
            correlation = round(spearman([t.reports[index] for t in trials], retrain_accuracies), 3)
        except ValueError:  # every trial scored the same there
            correlation = None
        by_report.append({"trial_epochs": round((index + 1) * epochs_per_report, 3), "spearman": correlation})
    return by_report


@dataclasses.dataclass(frozen=True)
class RankOptions:
    best: Path
    storage: str
    study: str | None
    retrains: int
    top: bool  # the `retrains` best trials, not `retrains` spread over the ranking
    seeds: int  # each trial retrains with seeds 0 to seeds - 1; its score is their mean
    epochs: int | None  # None: as many as the winner's search space plans (Best.retrain_epochs)
    out: Path
    numbers: tuple[int, ...] = ()  # these trials instead (--trials), e.g. an earlier run's leaders
    precision: str = "auto"  # TrainConfig.precision; force one to compare with retrains from another CPU
    # Retrains at once, each in a one-thread process of its own: two 8k retrains side by side took
    # about 290 s a model, one alone with both cores 470-650 s (AVX-512 EPYC; README, Performance).
    # 1: one at a time, in this process, with the processes and threads the trainer picks.
    jobs: int = 1


class RetrainLost(RuntimeError):
    """A retrain's process died before it reported: the ranking cannot be completed this run."""


def _load_trials(storage_url: str, study_name: str | None) -> tuple[str, list[TrialRecord]]:
    if not is_database(storage_url) and not Path(storage_url).is_file():
        raise UserError(f"no study journal at {storage_url}; pass the search's --storage")
    storage = make_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise UserError(
                f"{redact(storage_url)} holds {len(names)} studies ({', '.join(names)}); pick one with --study"
            )
        study_name = names[0]
    elif study_name not in names:
        raise UserError(f"no study {study_name!r} in {redact(storage_url)}; it holds {', '.join(names) or 'none'}")
    return study_name, records(optuna.load_study(study_name=study_name, storage=storage).trials)


def trial_folder(out: Path, trial: int) -> Path:
    return out / f"trial{trial}"


def seed_folder(out: Path, trial: int, seed: int) -> Path:
    """Seed 0 in the trial's own folder, as before there were seeds, where its best.json is."""
    folder = trial_folder(out, trial)
    return folder if seed == 0 else folder / "seeds" / f"seed{seed}"


def _earlier_retrain(metrics_path: Path, epochs: int, seed: int, precision: str) -> dict | None:
    """The metrics a measuring retrain of this length, seed and precision left there, if any (else it is redone).

    Only one from this CPU, where the record names one (older ones do not): on another the same
    seed is, in effect, another seed.
    """
    if not metrics_path.is_file():
        return None
    metrics = json.loads(metrics_path.read_text())
    same = metrics.get("epochs") == epochs and metrics.get("seed", 0) == seed
    same = same and precision in ("auto", metrics.get("train", {}).get("precision"))
    here = machine.this_cpu().describe()
    same = same and metrics.get("machine", here) == here
    return metrics if same and metrics.get("val_accuracy") is not None else None


def best_retrain(rows: list[dict]) -> dict:
    """The trial that retrained best, how far ahead it is, and which trial to retrain in full.

    `rows` come best trial score first: the first is the search's pick. A trial that retrained
    better replaces it only by a lead beyond the larger spread between the two's seeds. One seed's
    lead never does: such leads (0.07 points at 5k, 0.08 at 8k) went the other way on more seeds
    or on the test set every time they were checked.
    """
    searched = rows[0]
    first, second = sorted(rows, key=lambda r: r["retrain_val_accuracy"], reverse=True)[:2]  # a tie: the better trial
    rival = second if first is searched else searched
    margin = round(first["retrain_val_accuracy"] - rival["retrain_val_accuracy"], 3)
    per_seed = [r["retrain_val_accuracy_per_seed"] for r in (first, rival)]
    spread = round(max(max(s) - min(s) for s in per_seed), 3) if len(per_seed[0]) > 1 else None
    beyond = margin > spread if spread is not None else None
    pick = first if first is searched or beyond else searched
    return {
        "trial": first["trial"],
        "lead_over_trial": rival["trial"],
        "lead_points": margin,
        "seed_spread": spread,  # None for one seed: nothing to weigh the lead against
        "lead_beyond_seed_spread": beyond,
        "pick": pick["trial"],  # the trial to retrain in full
        "best_json": str(trial_folder(Path(), pick["trial"]) / "best.json"),
    }


def _earlier(trial: TrialRecord, seed: int, options: RankOptions, console: Console) -> dict | None:
    """The metrics of this trial's measuring retrain with this seed, if one is there to read back."""
    folder = seed_folder(options.out, trial.number, seed)
    metrics = _earlier_retrain(folder / "metrics.json", options.epochs, seed, options.precision)
    if metrics is not None:
        console.print(f"trial {trial.number} seed {seed}: retrained before, reading {folder / 'metrics.json'}")
    return metrics


def _retrain(
    trial: TrialRecord, seed: int, winner: best.Best, study_name: str, options: RankOptions, console: Console
) -> dict:
    """One measuring retrain of a trial on the training split; with several jobs, in one process and thread."""
    best_json = trial_folder(options.out, trial.number) / "best.json"  # one per trial, whatever the seed
    candidate = dataclasses.replace(
        winner,
        genome=trial.genome,
        recipe=trial.recipe,
        # the space stays, so nas.retrain trains a pick as long as the space plans
        found={"study": study_name, "trial": trial.number, "val_accuracy": trial.accuracy}
        | {key: winner.found[key] for key in ("space",) if key in winner.found},
    )
    candidate.write(best_json)
    return retrain(
        RetrainOptions(
            best=best_json,
            epochs=options.epochs,
            out=seed_folder(options.out, trial.number, seed),
            seed=seed,
            data_dir=None,
            max_params=None,
            min_accuracy=0.0,  # not shipped: these models only measure the ranking
            processes=1 if options.jobs > 1 else None,
            precision=options.precision,
            train_on="split",
            final=False,
        ),
        console,
    )


def _started(trial: TrialRecord, seed: int, console: Console) -> None:
    console.print(f"trial {trial.number} seed {seed}: {trial.genome.describe()}, retraining on the training split")


def _measure_all(
    picked: list[TrialRecord], winner: best.Best, study_name: str, options: RankOptions, console: Console
) -> dict[tuple[int, int], dict]:
    """Each picked trial's metrics for each seed, by (trial, seed): read back where a retrain is
    there already, else retrained, one at a time or `options.jobs` at once."""
    measured, todo = {}, []
    for trial in picked:
        for seed in range(options.seeds):
            metrics = _earlier(trial, seed, options, console)
            if metrics is not None:
                measured[trial.number, seed] = metrics
            else:
                todo.append((trial, seed))
    if options.jobs == 1:
        for trial, seed in todo:
            _started(trial, seed, console)
            measured[trial.number, seed] = _retrain(trial, seed, winner, study_name, options, console)
        return measured
    return measured | _retrain_at_once(todo, winner, study_name, options, console)


def _retrain_at_once(
    todo: list[tuple[TrialRecord, int]], winner: best.Best, study_name: str, options: RankOptions, console: Console
) -> dict[tuple[int, int], dict]:
    """`todo`'s retrains, `options.jobs` at a time, each in a spawned one-thread process that sends
    back its metrics; one that dies is reported at once, and on any stop the others are ended."""
    if todo:  # timed here once, not by the jobs at once (they would wait on its lock)
        machine.profile(announce=console.print)
    results_queue, waiting, running, measured = spawn.Queue(), list(todo), {}, {}
    threads = threads_per_process(options.jobs)
    try:
        while waiting or running:
            while waiting and len(running) < options.jobs:
                trial, seed = waiting.pop(0)
                _started(trial, seed, console)
                args = (results_queue, trial, seed, winner, study_name, options, threads)
                running[trial.number, seed] = process = spawn.Process(target=_retrain_in_worker, args=args)
                start_deaf_to_ctrl_c(process)
            try:
                key, metrics, problem = results_queue.get(timeout=1)
            except Empty:
                _check_alive(running)
                continue
            running.pop(key).join()
            if problem is not None:
                raise UserError(problem)
            measured[key] = metrics
            log = seed_folder(options.out, *key) / "train.log"
            console.print(
                f"trial {key[0]} seed {key[1]}: {metrics['val_accuracy']:.2f}% validation accuracy after "
                f"{metrics['train_seconds']:.0f} s of training (epoch by epoch: {log})"
            )
    finally:
        for process in running.values():
            process.terminate()
            process.join()
    return measured


def _retrain_in_worker(
    results_queue, trial: TrialRecord, seed: int, winner: best.Best, study_name: str, options: RankOptions, threads: int
) -> None:
    """A spawned job: one retrain, quietly (two at once would interleave their epochs), its metrics
    or its one-line problem sent back. Any other error ends the process, which the parent reports."""
    die_with_parent()
    torch.set_num_threads(threads)
    try:
        metrics = _retrain(trial, seed, winner, study_name, options, Console(file=io.StringIO()))
        results_queue.put(((trial.number, seed), metrics, None))
    except UserError as error:
        results_queue.put(((trial.number, seed), None, str(error)))


def _check_alive(running: dict) -> None:
    """Raise RetrainLost for a job that died. One that ended well has put its metrics in the queue
    before exiting (a process flushes its queue's buffer as it exits), so the next read finds them."""
    for (trial, seed), process in running.items():
        code = process.exitcode
        if code is None or code == 0:
            continue
        how = f"died ({f'signal {-code}' if code < 0 else f'exit code {code}'})"
        if code == -signal.SIGKILL:
            how = "was killed (signal 9, as the out-of-memory killer does)"
        raise RetrainLost(f"the retrain of trial {trial} seed {seed} {how}")


def rank(options: RankOptions, console: Console | None = None) -> dict:
    """Retrain the picked trials (or read back those already retrained) and write the summary."""
    console = console or Console(soft_wrap=True)
    study_name, trials = _load_trials(options.storage, options.study)
    winner = best.load(options.best)
    options = dataclasses.replace(options, epochs=options.epochs or winner.retrain_epochs)
    picked = pick_trials(trials, options.retrains, options.top, options.numbers)
    results.check_writable(options.out)
    measured = _measure_all(picked, winner, study_name, options, console)
    rows = []
    for trial in picked:
        runs = [measured[trial.number, seed] for seed in range(options.seeds)]
        accuracies = [metrics["val_accuracy"] for metrics in runs]
        rows.append(
            {
                "trial": trial.number,
                "architecture": trial.genome.describe(),
                "params": trial.params,
                "macs": trial.macs,
                "trial_val_accuracy": trial.accuracy,
                "retrain_val_accuracy": round(sum(accuracies) / len(accuracies), 3),  # the mean over the seeds
                "retrain_val_accuracy_per_seed": accuracies,
                "retrain_seconds": round(sum(metrics["train_seconds"] for metrics in runs), 1),
            }
        )
    seeds = "seed 0" if options.seeds == 1 else f"the mean of seeds 0-{options.seeds - 1}"
    retrain_accuracies = [r["retrain_val_accuracy"] for r in rows]
    try:
        correlation = round(spearman([r["trial_val_accuracy"] for r in rows], retrain_accuracies), 3)
    except ValueError:  # every trial, or every retrain, scored the same
        correlation = None
    outcome = best_retrain(rows)
    picked_as, summary_name = _pick_mode(options, len(rows))
    ranking = {
        "study": study_name,
        "picked": picked_as,
        "trial_epochs": picked[0].epochs_run,
        "retrain_epochs": options.epochs,
        "retrained_on": f"the training split; validation accuracy on the held-out split, {seeds}",
        "spearman": correlation,
        "spearman_by_report": spearman_by_report(picked, retrain_accuracies),
        "best_retrain": outcome,
        "trials": rows,
    }
    summary = options.out / summary_name
    results.write_json(summary, ranking)
    console.print(_table(rows))
    console.print(f"Spearman rank correlation, trial score vs retrain: {correlation}")
    for report in ranking["spearman_by_report"]:
        console.print(f"  scored after {report['trial_epochs']:g} of the trial's epochs: {report['spearman']}")
    console.print(_verdict(outcome, rows, seeds, options.out))
    console.print(f"wrote {summary}")
    return ranking


def _verdict(outcome: dict, rows: list[dict], seeds: str, out: Path) -> str:
    """What the retrains say, in words, and the command that retrains the pick in full."""
    accuracy = next(r["retrain_val_accuracy"] for r in rows if r["trial"] == outcome["trial"])
    said = (
        f"best after full training: trial {outcome['trial']}, {accuracy:.2f}% validation ({seeds}), "
        f"{outcome['lead_points']:.2f} points ahead of trial {outcome['lead_over_trial']}"
    )
    if outcome["pick"] != outcome["trial"]:
        weighed = (
            f"within the seeds' spread of {outcome['seed_spread']:.2f}: a toss-up"
            if outcome["seed_spread"] is not None
            else "one seed's lead, which more seeds (--seeds 3) may reverse"
        )
        said += f", {weighed}; the search's pick, trial {outcome['pick']}, stays"
    elif outcome["trial"] != rows[0]["trial"]:
        said += f", more than the seeds' spread of {outcome['seed_spread']:.2f}: it replaces the search's pick"
    else:
        said += ": the search's pick retrained best too"
    folder = trial_folder(out, outcome["pick"])
    return f"{said}; next: python -m nas.retrain {folder / 'best.json'} --out {folder / 'final'}"


def _pick_mode(options: RankOptions, count: int) -> tuple[str, str]:
    """How the trials were picked, in words, and the summary's file name."""
    if options.numbers:
        return (
            f"trials {', '.join(map(str, options.numbers))}, named",
            f"trials{'-'.join(map(str, sorted(options.numbers)))}.json",
        )
    if options.top:
        return f"the {count} best trials", "top.json"
    return f"{count} trials spread over the ranking", "ranking.json"


def _table(rows: list[dict]) -> Table:
    table = Table("trial", "architecture", "params", "trial val %", "retrain val %")
    for r in rows:
        table.add_row(
            str(r["trial"]), r["architecture"], f"{r['params']:,}",
            f"{r['trial_val_accuracy']:.2f}", f"{r['retrain_val_accuracy']:.2f}",
        )  # fmt: skip
    return table


def parse_args(argv: list[str] | None) -> RankOptions:
    parser = ArgumentParser(prog="nas.rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("best", type=Path, help="best.json written by nas.search (its data split and budget)")
    parser.add_argument(
        "--storage", help="the search's journal file or database URL (default: study.journal beside best.json)"
    )
    parser.add_argument("--study", help="study name (default: the storage's only study)")
    picks = parser.add_mutually_exclusive_group()
    picks.add_argument(
        "--retrains",
        type=int,
        default=DEFAULT_RETRAINS,
        help=f"trials to retrain, spread over the ranking (default {DEFAULT_RETRAINS})",
    )
    picks.add_argument("--top", type=int, help="retrain the TOP best trials instead, to pick among the leaders")
    picks.add_argument(
        "--trials",
        type=int,
        nargs="+",
        metavar="N",
        help="retrain these trials (by number) instead, e.g. an earlier run's leaders, to settle them with --seeds",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="retrain each trial with seeds 0 to SEEDS-1 and rank by their mean (default 1: seed 0 only)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"retrain epochs (default: as best.json's search space plans in [retrain], else {MAX_EPOCHS})",
    )
    parser.add_argument("--out", type=Path, help="result folder (default: ranking/ beside best.json)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"retrains at once, each in a one-thread process (default {DEFAULT_JOBS}); 1: one at a time, "
        "with the processes and threads the trainer picks",
    )
    machine.add_precision_option(parser)
    args = parser.parse_args(argv)
    if args.trials is not None:
        count, flag = len(set(args.trials)), "--trials"
    elif args.top is not None:
        count, flag = args.top, "--top"
    else:
        count, flag = args.retrains, "--retrains"
    if count < 2:
        raise UserError(f"{flag} must be at least 2 to compare rankings, got {count}")
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    return RankOptions(
        best=args.best,
        storage=args.storage or str(args.best.parent / "study.journal"),
        study=args.study,
        retrains=count,
        top=args.top is not None,
        numbers=tuple(sorted(set(args.trials or ()))),
        seeds=args.seeds,
        epochs=args.epochs,
        out=args.out or args.best.parent / "ranking",
        precision=args.precision,
        jobs=args.jobs,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        rank(options)
    except KeyboardInterrupt:
        print(
            f"interrupted; finished retrains stay in {options.out} and are read back on the next run", file=sys.stderr
        )
        return 130
    except (ReplicaLost, RetrainLost) as lost:
        print(f"error: {lost}. Finished retrains stay in {options.out}; run the command again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
