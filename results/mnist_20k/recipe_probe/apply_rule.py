"""Apply rule.md to the probe JSONs; print the outcome (the last line: 'adopt' or 'not adopted')."""

import json
from pathlib import Path

HERE = Path(__file__).parent


def val(arm: str, seed: int) -> float:
    return json.loads((HERE / f"probe_{arm}_s{seed}.json").read_text())["val_accuracy"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


base = [val("base", s) for s in range(3)]
scale = [val("scale", s) for s in range(3)]
gain = mean(scale) - mean(base)
ahead = sum(s > b for s, b in zip(scale, base))
print(f"base: {base} mean {mean(base):.3f}")
print(f"scale: {scale} mean {mean(scale):.3f}, gain {gain:+.3f}, ahead on {ahead} of 3")
print("adopt" if gain >= 0.06 - 1e-9 and ahead >= 2 else "not adopted")
