"""Apply rule.md and rule_replicas.md to the probe JSONs; print the outcome."""
import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = Path(__file__).resolve().parent.parent  # results/mnist_8k
TWO_REPLICA_RUNS = [RESULTS / f"ranking/averaging/probe_t6_s{s}.json" for s in range(3)] + [
    RESULTS / f"sixth_search/confirm/t6_s{s}.json" for s in range(3, 6)
]


def val(arm, seed):
    return json.loads((HERE / f"probe_{arm}_s{seed}.json").read_text())["val_accuracy"]


def mean(xs):
    return sum(xs) / len(xs)


base = [val("base", s) for s in range(3)]
print(f"base: {base} mean {mean(base):.3f}")
gains = {}
for arm in ("ls", "scale"):
    figures = [val(arm, s) for s in range(3)]
    gain = mean(figures) - mean(base)
    ahead = sum(f > b for f, b in zip(figures, base, strict=True))
    qualifies = gain >= 0.06 - 1e-9 and ahead >= 2
    print(f"{arm}: {figures} mean {mean(figures):.3f}, gain {gain:+.3f}, ahead on {ahead} of 3: "
          f"{'qualifies' if qualifies else 'not adopted'}")
    if qualifies:
        gains[arm] = gain
print("recipe rule:", f"adopt {max(gains, key=gains.get)}" if gains else "nothing adopted")

one = [val("base", s) for s in range(6)]
two = [json.loads(path.read_text())["last"] for path in TWO_REPLICA_RUNS]
lead = mean(one) - mean(two)
ahead = sum(a > b for a, b in zip(one, two, strict=True))
print(f"one process: {one} mean {mean(one):.3f}; two replicas: {two} mean {mean(two):.3f}; "
      f"lead {lead:+.3f}, ahead on {ahead} of 6")
print("replica rule:", "the split costs accuracy" if lead >= 0.06 - 1e-9 and ahead >= 4 else "no change")
