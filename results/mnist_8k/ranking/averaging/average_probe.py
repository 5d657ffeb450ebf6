"""Does averaging weights, or recomputing BatchNorm statistics, help a tiny net? (2026-11-24)

One training run (15 epochs unless EPOCHS, fp32) on the 50k training split; the shadows (EMA over
0.25, 1 and 3 epochs, uniform means of the last 1 and 3 epochs) are kept from the first replica's
weights and BatchNorm buffers after every step, so every variant is read off the same run: a
paired comparison, on validation only. "+bn": the same weights with BatchNorm's statistics
recomputed over the first 10,000 training images, un-augmented, the whole net in training mode
(dropout included; the trainer change tried after it, then reverted, left dropout off).

From the repository root:
python results/mnist_8k/ranking/averaging/average_probe.py BEST_JSON SEED OUT_JSON [EPOCHS]
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch

from nas import best
from nas.data import load_dataset, to_pixels
from nas.model import build_model, with_normalisation
from nas.train import evaluate, train

EMA_HORIZONS = (0.25, 1.0, 3.0)  # epochs
UNIFORM_LAST = (1, 3)  # epochs


def with_state(model, state):
    twin = copy.deepcopy(model)
    twin.load_state_dict({**twin.state_dict(), **state})
    return twin


@torch.no_grad()
def precise_bn(model, images, batch=500):
    """BatchNorm running statistics re-estimated on un-augmented training images (a cumulative mean)."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, len(images), batch):
        model(to_pixels(images[start : start + batch]))
    return model


def main(path, seed, out, epochs=15):
    winner = best.load(Path(path))
    data = load_dataset(winner.data.dir, winner.data.val_size, winner.data.split_seed, include_test=False)
    torch.manual_seed(seed)
    model = with_normalisation(build_model(winner.genome), data.mean, data.std)
    config = winner.recipe.config(epochs=epochs, seed=seed, precision="fp32")
    steps = config.steps_per_epoch(len(data.train))
    decays = {h: 1 - 1 / (h * steps) for h in EMA_HORIZONS}
    ema = {}
    sums = {k: None for k in UNIFORM_LAST}
    counts = dict.fromkeys(UNIFORM_LAST, 0)
    names = [k for k, v in model.state_dict().items() if v.is_floating_point()]  # weights and BatchNorm statistics

    def on_step(epoch, step, steps_per_epoch):
        state = model.state_dict()
        now = [state[k].detach() for k in names]
        for h, d in decays.items():
            if h not in ema:
                ema[h] = [t.clone() for t in now]
            else:
                torch._foreach_lerp_(ema[h], now, 1 - d)
        for k in UNIFORM_LAST:
            if epoch >= config.epochs - k:
                if sums[k] is None:
                    sums[k] = [t.clone() for t in now]
                else:
                    torch._foreach_add_(sums[k], now)
                counts[k] += 1

    start = time.perf_counter()
    reports = train(model, data, config, on_step=on_step)
    seconds = time.perf_counter() - start
    variants = {"last": model}
    for h, tensors in ema.items():
        variants[f"ema{h:g}ep"] = with_state(model, dict(zip(names, tensors, strict=True)))
    for k, tensors in sums.items():
        variants[f"mean_last{k}ep"] = with_state(model, {n: t / counts[k] for n, t in zip(names, tensors, strict=True)})
    calibration = data.train.images[:10_000]
    result = {"best": path, "seed": seed, "train_seconds": round(seconds, 1), "reported_val": reports[-1].val_accuracy}
    for name, m in variants.items():
        result[name] = evaluate(m, data.val)[1]
        result[name + "+bn"] = evaluate(precise_bn(m, calibration), data.val)[1]
    print(json.dumps(result))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:]))
