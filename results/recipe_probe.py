"""A recipe probe (sessions 20 and 21): does a change of recipe help a shipped net?

One training run of BEST's architecture and recipe (--epochs, 15 by default; fp32, one process,
one thread) on the 50k training split, scored on the 10k validation split only, with the
recipe's augment_scale replaced by --scale and, where given, its rotation and shift by --degrees
and --shift; --label-smoothing, not a trainer setting, is patched into this process's trainer.
--residual and --attention (session 22), not genome settings, add skip connections or a
squeeze-excite block to the built network (see `with_skips`, `with_attention`). From the
repository root:

python results/recipe_probe.py BEST_JSON SEED OUT_JSON [--scale S] [--degrees D] [--shift P]
    [--label-smoothing E] [--epochs E] [--residual] [--attention]
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
from torch import nn

import nas.train
from nas import best
from nas.data import load_dataset
from nas.genome import IN_CHANNELS, Genome
from nas.model import build_model, with_normalisation


def smooth_labels(label_smoothing: float) -> None:
    """Train against targets smoothed by `label_smoothing` (the training loss only) in this process."""
    smoothed = types.SimpleNamespace(**vars(F))
    smoothed.cross_entropy = functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    nas.train.F = smoothed


class Skip(nn.Module):
    """ResNet's basic-block add: `body(x)` plus x, cropped to the body's output where valid convs shrank it."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        trim = (x.shape[-1] - out.shape[-1]) // 2
        return out + (x[..., trim : x.shape[-2] - trim, trim : x.shape[-1] - trim] if trim else x)


def split_blocks(genome: Genome, model: nn.Sequential) -> list:
    """`model`'s layers (build_model's) as a list in which each conv block's layers are one
    (block, channels in, layers) triple; pools, dropout and the head stay single layers."""
    layers, blocks = list(model), [block for stage in genome.stages for block in stage]
    out, channels = [], IN_CHANNELS
    while layers:
        layer = layers.pop(0)
        if not isinstance(layer, nn.Conv2d) or not blocks:  # pools, dropout, the head
            out.append(layer)
            continue
        block = blocks.pop(0)
        size = 6 if block.separable else 3  # conv_block's layers: (depthwise, BN, ReLU,) conv, BN, ReLU
        out.append((block, channels, [layer] + [layers.pop(0) for _ in range(size - 1)]))
        channels = block.width
    return out


def with_skips(genome: Genome, model: nn.Sequential) -> nn.Sequential:
    """`model` (build_model's, unchanged weights) with every 3x3 block that keeps its channel count
    wrapped in a Skip before its last ReLU. Parameter count and MACs barely change (one add)."""
    out = []
    for item in split_blocks(genome, model):
        if not isinstance(item, tuple):
            out.append(item)
            continue
        block, channels, body = item
        if block.kernel == 3 and block.width == channels:
            out += [Skip(nn.Sequential(*body[:-1])), body[-1]]
        else:
            out += body
    return nn.Sequential(*out)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as seed 003 has it: each channel scaled by a gate
    computed from every channel's mean, through a bottleneck of channels / reduction."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def with_attention(genome: Genome, model: nn.Sequential) -> nn.Sequential:
    """`model` (build_model's, unchanged weights) with a SqueezeExcite after its second-to-last conv
    block, where seed 003 has it (before the last conv)."""
    items = split_blocks(genome, model)
    target = [i for i, item in enumerate(items) if isinstance(item, tuple)][-2]
    out = []
    for i, item in enumerate(items):
        out += item[2] if isinstance(item, tuple) else [item]
        if i == target:
            out.append(SqueezeExcite(item[0].width))
    return nn.Sequential(*out)


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
    parser.add_argument("--residual", action="store_true", help="skip connections (see with_skips)")
    parser.add_argument("--attention", action="store_true", help="one squeeze-excite block (see with_attention)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.label_smoothing:
        smooth_labels(args.label_smoothing)
    winner = best.load(Path(args.best))
    data = load_dataset(winner.data.dir, winner.data.val_size, winner.data.split_seed, include_test=False)
    torch.manual_seed(args.seed)
    network = build_model(winner.genome)
    if args.residual:
        network = with_skips(winner.genome, network)
    if args.attention:
        network = with_attention(winner.genome, network)
    model = with_normalisation(network, data.mean, data.std)
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
        "residual": args.residual,
        "attention": args.attention,
        "params": sum(p.numel() for p in network.parameters()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": reports[-1].val_accuracy,
        "train_accuracy": reports[-1].train_accuracy,
    }
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
