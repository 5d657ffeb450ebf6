"""Apply rule_replication.md: the paired rule on seeds 3-5 alone; the last line is the outcome."""

import json
from pathlib import Path

HERE = Path(__file__).parent
SEEDS = (3, 4, 5)


def val(arm: str, seed: int) -> float:
    return json.loads((HERE / f"probe_{arm}_s{seed}.json").read_text())["val_accuracy"]


base = [val("base", s) for s in SEEDS]
scale = [val("scale", s) for s in SEEDS]
gain = sum(scale) / 3 - sum(base) / 3
ahead = sum(s > b for s, b in zip(scale, base, strict=True))
print(f"seeds {SEEDS}: base {base} mean {sum(base) / 3:.3f}; scale {scale} mean {sum(scale) / 3:.3f}")
print(f"gain {gain:+.3f}, ahead on {ahead} of 3")
print("adopt" if gain >= 0.06 - 1e-9 and ahead >= 2 else "not adopted")
