"""Retrain a searched architecture in full, test it once, and export it frozen with spec tests.

python -m nas.retrain runs/mnist_20k/best.json
"""

from __future__ import annotations

import hashlib
import io
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from nas import best, known, plots, results
from nas.data import Split, load_dataset, to_pixels, with_validation_in_training
from nas.errors import ArgumentParser, UserError, cli
from nas.genome import IN_CHANNELS, INPUT_SIZE, NUM_CLASSES, param_count
from nas.machine import add_precision_option, this_cpu
from nas.model import build_model, count_macs, with_normalisation
from nas.space import MAX_EPOCHS
from nas.train import ReplicaLost, Report, evaluate, train

SPEC_TESTS = Path(__file__).with_name("spec_tests.py")
DEFAULT_MIN_ACCURACY = 99.4  # percent on the test set; the seeds' floor
DEFAULT_DISTILL_WEIGHT = 0.5  # with --teacher: half the loss from the teacher's scores, half from the labels
TRAIN_ON = {
    "all": "every training image: the search's training and validation splits",
    "split": "the search's training split only; validation figures stay unseen",
}


def export_frozen(model: nn.Module, path: Path) -> None:
    """Save the eval-mode model as a torch.export program with a dynamic batch dimension."""
    model = model.eval()
    example = torch.zeros(2, IN_CHANNELS, INPUT_SIZE, INPUT_SIZE)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    results.write_bytes(path, buffer.getvalue())


def load_teacher(path: Path) -> tuple[nn.Module, dict]:
    """A frozen model.pt2 from an earlier retrain, as a callable module, and the record of which it was.

    The file is read once: the digest recorded is that of the bytes the teacher was loaded from.
    """
    fix = "pass --teacher a model.pt2 written by nas.retrain"
    if not path.is_file():
        raise UserError(f"{path}: no such file; {fix}")
    payload = path.read_bytes()
    record = {"model": str(path), "sha256": hashlib.sha256(payload).hexdigest()}
    export_log = logging.getLogger("torch.export")  # it logs a screenful before raising on a bad file
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(io.BytesIO(payload)).module(), record
    except Exception as error:  # anything that is not an exported program
        raise UserError(f"{path}: not a frozen model ({type(error).__name__}); {fix}") from None
    finally:
        export_log.setLevel(level)


def teacher_logits(teacher: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's scores for every image of `split`, once: the targets a distilled net learns from."""
    with torch.inference_mode():
        logits = torch.cat(
            [teacher(to_pixels(split.images[start : start + batch_size])) for start in range(0, len(split), batch_size)]
        )
    if logits.shape != (len(split), NUM_CLASSES):
        shape = tuple(logits.shape[1:])
        raise UserError(f"the teacher's output per image is {shape}, not {NUM_CLASSES} scores; pass an MNIST model")
    return logits.float()


def layer_names(model: nn.Module) -> list[str]:
    """Leaf module types in order: the record of what the trained network contained."""
    return [type(m).__name__ for m in model.modules() if not list(m.children())]


def epoch_line(report: Report, epochs: int, val_name: str = "val") -> str:
    return (
        f"epoch {round(report.epoch):>2}/{epochs}  "
        f"train loss {report.train_loss:.4f} acc {report.train_accuracy:.2f}%  "
        f"{val_name} loss {report.val_loss:.4f} acc {report.val_accuracy:.2f}%  "
        f"lr {report.lr:.4f}  {report.seconds:.0f} s"
    )


@dataclass(frozen=True)
class RetrainOptions:
    best: Path
    epochs: int | None  # None: as many as best.json's search space plans (Best.retrain_epochs)
    out: Path
    seed: int
    data_dir: Path | None
    max_params: int | None
    min_accuracy: float
    processes: int | None = None  # data-parallel training replicas; None: as measured on this machine
    precision: str = "auto"  # TrainConfig.precision
    train_on: str = "all"  # one of TRAIN_ON
    design: str | None = None  # a known design's name: train it instead of best.json's genome, same recipe
    teacher: Path | None = None  # a frozen model.pt2 to distil from
    distill_weight: float = DEFAULT_DISTILL_WEIGHT  # TrainConfig.distill_weight, with a teacher
    augment_scale: float | None = None  # None: best.json's recipe's
    # False: a measuring run (nas.rank compares candidates on validation): the test set is not
    # even loaded, and nothing is exported, so there is no test figure to choose by
    final: bool = True


def retrain(options: RetrainOptions, console: Console | None = None) -> dict:
    """Train the search's winner, test it once, write the result files; a measuring run only records."""
    console = console or Console(soft_wrap=True)  # long lines stay whole in log files
    winner = best.load(options.best)
    max_params = options.max_params or winner.max_params
    genome = known.by_name(options.design, winner.space()).genome if options.design else winner.genome
    params = param_count(genome)
    if params > max_params:
        raise UserError(f"the architecture has {params:,} parameters, over --max-params {max_params:,}")
    teacher, teacher_record = load_teacher(options.teacher) if options.teacher else (None, None)
    results.check_writable(options.out)
    data_dir = str(options.data_dir.resolve()) if options.data_dir else winner.data.dir
    data = load_dataset(data_dir, winner.data.val_size, winner.data.split_seed, include_test=options.final)
    if options.train_on == "all":
        data = with_validation_in_training(data)
    if teacher is not None:
        data = replace(data, train=replace(data.train, teacher_logits=teacher_logits(teacher, data.train)))
    epochs = options.epochs or winner.retrain_epochs
    torch.manual_seed(options.seed)
    model = with_normalisation(build_model(genome), data.mean, data.std)
    recipe = winner.recipe
    if options.augment_scale is not None:
        recipe = replace(recipe, augment_scale=options.augment_scale)
    config = recipe.config(
        epochs=epochs,
        seed=options.seed,
        precision=options.precision,
        processes=options.processes,
        distill_weight=options.distill_weight if options.teacher else 0.0,
    ).resolved(model, data.train)
    # A test's short training would pay more for the timing than the estimate is worth.
    images = len(data.train)
    estimated_seconds = config.estimated_seconds(model, data.train, images) if config.pays_for_timing(images) else None
    log = [
        f"retrain {options.best}"
        + (f" as known design {options.design}" if options.design else "")
        + (f", distilled from {options.teacher}" if options.teacher else "")
        + f": {genome.describe()}, {params:,} params, {epochs} epochs on {len(data.train):,} images, "
        f"seed {options.seed}, {config.precision}{' channels-last' if config.channels_last else ''}, "
        f"{config.processes} training process(es)"
        + (f", about {estimated_seconds:.0f} s of training" if estimated_seconds is not None else "")
    ]
    console.print(log[0])

    start = time.perf_counter()
    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=None, epoch=1)

        def on_step(epoch: int, step: int, steps: int) -> None:
            progress.update(task, completed=step, total=steps, epoch=f"{epoch + 1}/{epochs}")

        def on_report(report: Report) -> None:
            # Trained on, the validation images only show the fit.
            log.append(epoch_line(report, epochs, "val" if options.train_on == "split" else "val (trained on)"))
            progress.console.print(log[-1])

        reports = train(model, data, config, on_report=on_report, on_step=on_step)
    train_seconds = time.perf_counter() - start
    test_loss = test_accuracy = None
    if options.final:
        test_loss, test_accuracy = evaluate(model, data.test)  # the one look at the test set
        log.append(
            f"test: loss {test_loss:.4f}, accuracy {test_accuracy:.2f}% on {len(data.test):,} images "
            f"(final epoch; {train_seconds:.0f} s of training)"
        )
        console.print(log[-1])

    out = options.out
    metrics = {
        "genome": genome.to_dict(),
        "architecture": genome.describe(),
        "params": params,
        "macs": count_macs(genome),
        "layers": layer_names(model),
        "spec": {"max_params": max_params, "max_epochs": MAX_EPOCHS, "min_test_accuracy": options.min_accuracy},
        "epochs": epochs,
        "train": asdict(config),
        "history": [asdict(r) for r in reports],
        # Only unseen images make it a validation figure.
        "val_accuracy": reports[-1].val_accuracy if options.train_on == "split" else None,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_seconds": round(train_seconds, 1),
        # TrainConfig.estimated_seconds, before training; None for a training too short to time
        "estimated_train_seconds": round(estimated_seconds, 1) if estimated_seconds is not None else None,
        "seed": options.seed,
        "data": {
            "dir": data_dir,
            "val_size": winner.data.val_size,
            "split_seed": winner.data.split_seed,
            "trained_on": f"{options.train_on}: {TRAIN_ON[options.train_on]} ({len(data.train):,} images)",
        },
        "known_design": options.design,
        "teacher": teacher_record,  # path and sha256
        "input": {
            "shape": ["N", IN_CHANNELS, INPUT_SIZE, INPUT_SIZE],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalisation": {"mean": data.mean, "std": data.std, "applied": "inside model.pt2"},
        },
        "classes": NUM_CLASSES,  # scores out, one per class
        "source": str(options.best),
        "command": results.command_line(),
        "versions": results.versions(),
        # The same seed ends 0.1-0.2 points apart on two CPUs (their kernels round differently).
        "machine": this_cpu().describe(),
    }
    written = ["metrics.json", "train.log", "training.png"]
    if options.final:
        export_frozen(model, out / "model.pt2")
        results.write_bytes(out / "weights.pt", _state_dict_bytes(model))
        results.write_bytes(out / "test_model.py", SPEC_TESTS.read_bytes())
        written = ["model.pt2", "weights.pt", "test_model.py", *written]
    results.write_json(out / "metrics.json", metrics)
    results.write_text(out / "train.log", "\n".join(log) + "\n")
    plots.plot_training(metrics["history"], out / "training.png")
    console.print(f"wrote {', '.join(written)} to {out}")
    if options.final:
        console.print(f"check the spec: pytest {out / 'test_model.py'}")
    return metrics


def _state_dict_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def parse_args(argv: list[str] | None) -> RetrainOptions:
    parser = ArgumentParser(prog="nas.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("best", type=Path, help="best.json written by nas.search")
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"training epochs (default: as best.json's search space plans in [retrain], else {MAX_EPOCHS})",
    )
    parser.add_argument("--out", type=Path, help="result folder (default: the folder of best.json)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, data order, augmentation, dropout")
    parser.add_argument("--data-dir", type=Path, help="MNIST-format directory (default: the one the search used)")
    parser.add_argument("--max-params", type=int, help="parameter budget (default: best.json's)")
    parser.add_argument(
        "--processes",
        type=int,
        help="data-parallel training processes, each with cores / N threads (default: the faster here, measured)",
    )
    add_precision_option(parser)
    parser.add_argument(
        "--train-on",
        choices=TRAIN_ON,
        default="all",
        help="all: every training image (default; the search has already chosen on validation); "
        "split: the search's training split only",
    )
    parser.add_argument(
        "--design",
        metavar="NAME",
        help="train this known design (nas/known_designs.json; 'NAME x0.80' as best.json's search scaled it "
        "to fit) with best.json's recipe instead of its genome",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        metavar="MODEL_PT2",
        help="distil from this frozen model (a model.pt2 from an earlier retrain, e.g. a larger budget's): "
        "it scores every training image once, and part of the loss matches its scores",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        help=f"with --teacher, the share of the loss that matches its scores (default {DEFAULT_DISTILL_WEIGHT})",
    )
    parser.add_argument(
        "--augment-scale",
        type=float,
        metavar="FRACTION",
        help="scale each augmented image by a random factor within 1 +- FRACTION (default: best.json's recipe's)",
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=DEFAULT_MIN_ACCURACY,
        help=f"test accuracy floor the generated tests check, percent (default {DEFAULT_MIN_ACCURACY})",
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if args.max_params is not None and args.max_params < 1:
        raise UserError(f"--max-params must be positive, got {args.max_params}")
    if args.processes is not None and args.processes < 1:
        raise UserError(f"--processes must be at least 1, got {args.processes}")
    if args.distill_weight is not None and not args.teacher:
        raise UserError("--distill-weight needs --teacher: the model whose scores it weighs")
    distill_weight = DEFAULT_DISTILL_WEIGHT if args.distill_weight is None else args.distill_weight
    if not 0 < distill_weight <= 1:
        raise UserError(f"--distill-weight must lie in (0, 1], got {distill_weight}")
    if args.augment_scale is not None and not 0 <= args.augment_scale < 1:
        raise UserError(f"--augment-scale must lie in [0, 1), got {args.augment_scale}")
    return RetrainOptions(
        best=args.best,
        epochs=args.epochs,
        out=args.out or args.best.parent,
        seed=args.seed,
        data_dir=args.data_dir,
        max_params=args.max_params,
        min_accuracy=args.min_accuracy,
        processes=args.processes,
        precision=args.precision,
        train_on=args.train_on,
        design=args.design,
        teacher=args.teacher,
        distill_weight=distill_weight,
        augment_scale=args.augment_scale,
    )


@cli
def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        retrain(options)
    except KeyboardInterrupt:
        print(
            f"interrupted; result files are written only after training, so {options.out} has no new model. "
            f"Run again with: {results.command_line()}",
            file=sys.stderr,
        )
        return 130
    except ReplicaLost as lost:
        # Not bad input, so not exit 2; one line all the same: nothing of use is in a traceback.
        print(
            f"error: {lost}. No model was written; run the command again (or with --processes 1)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
