"""Does label smoothing, or random scaling, help the shipped 8k net? (2026-11-24, session 20)

One training run of BEST's architecture and recipe (15 epochs, fp32, one process, one thread) on
the 50k training split, scored on the 10k validation split only; the knob under test is patched
into the trainer for this process, so every arm runs the same code path:
  --label-smoothing E   cross-entropy against targets smoothed by E (training loss only)
  --scale S             each augmented image also scaled by a factor drawn from [1 - S, 1 + S]

From the repository root:
python results/mnist_8k/recipe_probe/recipe_probe.py BEST_JSON SEED OUT_JSON [--label-smoothing E] [--scale S]
"""

import argparse
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


def patch(label_smoothing: float, scale: float) -> None:
    if label_smoothing:
        smoothed = types.SimpleNamespace(**vars(F))
        smoothed.cross_entropy = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
        nas.train.F = smoothed
    if scale:
        rotate_and_shift = nas.train.random_affine

        def with_scale(n, max_degrees, max_shift, generator, size=28):
            theta = rotate_and_shift(n, max_degrees, max_shift, generator, size)
            factor = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
            theta[:, :, :2] *= factor[:, None, None]
            return theta

        nas.train.random_affine = with_scale


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("best")
    parser.add_argument("seed", type=int)
    parser.add_argument("out")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--scale", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    patch(args.label_smoothing, args.scale)
    winner = best.load(Path(args.best))
    data = load_dataset(winner.data.dir, winner.data.val_size, winner.data.split_seed, include_test=False)
    torch.manual_seed(args.seed)
    model = with_normalisation(build_model(winner.genome), data.mean, data.std)
    config = winner.recipe.config(epochs=args.epochs, seed=args.seed, precision="fp32", processes=1)
    start = time.perf_counter()
    reports = nas.train.train(model, data, config)
    result = {
        "best": args.best,
        "seed": args.seed,
        "label_smoothing": args.label_smoothing,
        "scale": args.scale,
        "train_seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": reports[-1].val_accuracy,
        "train_accuracy": reports[-1].train_accuracy,
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
