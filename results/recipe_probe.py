"""A recipe probe (sessions 20 and 21): does a change of recipe help a shipped net?

One training run of BEST's architecture and recipe (--epochs, 15 by default; fp32, one process,
one thread) on the 50k training split, scored on the 10k validation split only, with the
recipe's augment_scale replaced by --scale and, where given, its rotation and shift by --degrees
and --shift; --label-smoothing, not a trainer setting, is patched into this process's trainer.
From the repository root:

python results/recipe_probe.py BEST_JSON SEED OUT_JSON [--scale S] [--degrees D] [--shift P]
    [--label-smoothing E] [--epochs E]
"""

import argparse
import dataclasses
import functools
import json
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import nas.train
from nas import best
from nas.data import load_dataset
from nas.model import build_model, with_normalisation


def smooth_labels(label_smoothing: float) -> None:
    """Train against targets smoothed by `label_smoothing` (the training loss only) in this process."""
    smoothed = types.SimpleNamespace(**vars(F))
    smoothed.cross_entropy = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    nas.train.F = smoothed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("best")
    parser.add_argument("seed", type=int)
    parser.add_argument("out")
    parser.add_argument("--scale", type=float, default=0.0)
    parser.add_argument("--degrees", type=float, help="max rotation (default: the recipe's)")
    parser.add_argument("--shift", type=float, help="max shift in pixels (default: the recipe's)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.label_smoothing:
        smooth_labels(args.label_smoothing)
    winner = best.load(Path(args.best))
    data = load_dataset(winner.data.dir, winner.data.val_size, winner.data.split_seed, include_test=False)
    torch.manual_seed(args.seed)
    model = with_normalisation(build_model(winner.genome), data.mean, data.std)
    recipe = dataclasses.replace(winner.recipe, augment_scale=args.scale)
    if args.degrees is not None:
        recipe = dataclasses.replace(recipe, augment_degrees=args.degrees)
    if args.shift is not None:
        recipe = dataclasses.replace(recipe, augment_shift=args.shift)
    config = recipe.config(epochs=args.epochs, seed=args.seed, precision="fp32", processes=1)
    start = time.perf_counter()
    reports = nas.train.train(model, data, config)
    result = {
        "best": args.best,
        "seed": args.seed,
        "scale": args.scale,
        "degrees": recipe.augment_degrees,
        "shift": recipe.augment_shift,
        "label_smoothing": args.label_smoothing,
        "train_seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": reports[-1].val_accuracy,
        "train_accuracy": reports[-1].train_accuracy,
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
