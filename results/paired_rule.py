"""Apply a paired probe's rule to results/recipe_probe.py's output; the last line printed is the outcome.

    python results/paired_rule.py BASE ARM [--seeds 0 1 2]

BASE and ARM are file prefixes: BASE_s{seed}.json and ARM_s{seed}.json for each seed, e.g.
results/mnist_5k/recipe_probe/probe_base and .../probe_scale. ARM is adopted when its mean
validation accuracy beats BASE's by 0.06 points or more and it is ahead on two seeds of three.
"""

import argparse
import json
from pathlib import Path


def val(prefix: str, seed: int) -> float:
    return json.loads(Path(f"{prefix}_s{seed}.json").read_text())["val_accuracy"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


parser = argparse.ArgumentParser()
parser.add_argument("base")
parser.add_argument("arm")
parser.add_argument("--seeds", type=int, nargs=3, default=[0, 1, 2])
args = parser.parse_args()
base = [val(args.base, s) for s in args.seeds]
figures = [val(args.arm, s) for s in args.seeds]
gain = mean(figures) - mean(base)
ahead = sum(f > b for f, b in zip(figures, base, strict=True))
print(f"seeds {args.seeds}")
print(f"{Path(args.base).name}: {base} mean {mean(base):.3f}")
print(f"{Path(args.arm).name}: {figures} mean {mean(figures):.3f}, gain {gain:+.3f}, ahead on {ahead} of 3")
print("adopt" if gain >= 0.06 - 1e-9 and ahead >= 2 else "not adopted")
