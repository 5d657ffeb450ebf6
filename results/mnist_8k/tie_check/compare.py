"""The tie check's figures (rule.md): means, the paired difference and its standard error, leads."""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = range(6)


def val(path: Path) -> float:
    return json.loads(path.read_text())["val_accuracy"]


shipped = [
    val(HERE.parent / "recipe_probe" / f"probe_scale_s{s}.json") if s < 3 else val(HERE / f"probe_shipped_s{s}.json")
    for s in SEEDS
]
known = [val(HERE / f"probe_snehanshu_s{s}.json") for s in SEEDS]
differences = [a - b for a, b in zip(shipped, known, strict=True)]
error = statistics.stdev(differences) / len(differences) ** 0.5
print(f"shipped net:           {shipped} mean {statistics.mean(shipped):.3f}")
print(f"snehanshu-raj-model-3: {known} mean {statistics.mean(known):.3f}")
print(f"shipped minus known: {statistics.mean(differences):+.3f} points, standard error {error:.3f}")
print(f"shipped ahead on {sum(d > 0 for d in differences)}, behind on {sum(d < 0 for d in differences)} of 6 seeds")
