"""Apply a paired probe's rule: python results/paired_rule.py DIR [ARM] (ARM defaults to 'scale').

Reads DIR/probe_base_s{0,1,2}.json and DIR/probe_ARM_s{0,1,2}.json (results/recipe_probe.py's
output) and prints the outcome, its last line 'adopt' or 'not adopted': ARM is adopted when its
mean validation accuracy beats base's by 0.06 points or more and it is ahead on two seeds of three.
"""

import json
import sys
from pathlib import Path


def val(path: Path) -> float:
    return json.loads(path.read_text())["val_accuracy"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


folder = Path(sys.argv[1])
arm = sys.argv[2] if len(sys.argv) > 2 else "scale"
base = [val(folder / f"probe_base_s{s}.json") for s in range(3)]
figures = [val(folder / f"probe_{arm}_s{s}.json") for s in range(3)]
gain = mean(figures) - mean(base)
ahead = sum(f > b for f, b in zip(figures, base, strict=True))
print(f"base: {base} mean {mean(base):.3f}")
print(f"{arm}: {figures} mean {mean(figures):.3f}, gain {gain:+.3f}, ahead on {ahead} of 3")
print("adopt" if gain >= 0.06 - 1e-9 and ahead >= 2 else "not adopted")
