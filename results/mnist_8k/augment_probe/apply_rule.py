"""Apply rule.md (arm `strong`), or with an argument rule_scale.md (arm `scale15`), to the probe JSONs.

The last line printed is the outcome: 'adopt' or 'not adopted'.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
SESSION_20_BASE = 99.49  # ../recipe_probe/probe_scale_s0.json


def val(path: Path) -> float:
    return json.loads(path.read_text())["val_accuracy"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


rerun = val(HERE / "probe_base_s0.json")
reproduced = rerun == SESSION_20_BASE
print(f"base seed 0 rerun: {rerun} ({'reproduces' if reproduced else 'differs from'} session 20's {SESSION_20_BASE})")
base_dir = HERE.parent / "recipe_probe" if reproduced else HERE
base = [val(base_dir / f"probe_{'scale' if reproduced else 'base'}_s{s}.json") for s in range(3)]
arm = sys.argv[1] if len(sys.argv) > 1 else "strong"
figures = [val(HERE / f"probe_{arm}_s{s}.json") for s in range(3)]
gain = mean(figures) - mean(base)
ahead = sum(f > b for f, b in zip(figures, base, strict=True))
print(f"base: {base} mean {mean(base):.3f}")
print(f"{arm}: {figures} mean {mean(figures):.3f}, gain {gain:+.3f}, ahead on {ahead} of 3")
print("adopt" if gain >= 0.06 - 1e-9 and ahead >= 2 else "not adopted")
