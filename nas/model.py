"""Build the network a genome describes, and measure it."""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache

import torch
from torch import nn

from nas.genome import IN_CHANNELS, INPUT_SIZE, NUM_CLASSES, Block, Genome, final_size


def conv_block(c_in: int, block: Block) -> list[nn.Module]:
    """Conv (no bias: BatchNorm's shift replaces it), BatchNorm, ReLU; separable: depthwise, then pointwise."""
    padding = block.kernel // 2 if block.padded else 0
    if block.separable:
        depthwise = nn.Conv2d(c_in, c_in, block.kernel, padding=padding, groups=c_in, bias=False)
        pointwise = nn.Conv2d(c_in, block.width, 1, bias=False)
        return [depthwise, nn.BatchNorm2d(c_in), nn.ReLU(), pointwise, nn.BatchNorm2d(block.width), nn.ReLU()]
    conv = nn.Conv2d(c_in, block.width, block.kernel, padding=padding, bias=False)
    return [conv, nn.BatchNorm2d(block.width), nn.ReLU()]


def build_head(head: str, channels: int, size: int) -> list[nn.Module]:
    """The layers that turn the last C x size x size feature map into class scores."""
    if head == "gap":
        return [nn.Conv2d(channels, NUM_CLASSES, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if head == "gap_fc":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES)]
    return [nn.Flatten(), nn.Linear(channels * size * size, NUM_CLASSES)]


def build_model(genome: Genome) -> nn.Sequential:
    """The untrained network for `genome`: N x 1 x 28 x 28 normalised pixels to N x 10 logits."""
    layers: list[nn.Module] = []
    channels = IN_CHANNELS
    for i, stage in enumerate(genome.stages):
        if i:
            layers.append(nn.MaxPool2d(2))
        # Dropout closes each stage, after its pool: element-wise dropout costs as much as a
        # conv on the CPU (measured ~15 ms per 256x16x28x28 map, forward and backward), and a
        # pooled map has a quarter of the elements.
        if i and genome.dropout:
            layers.append(nn.Dropout(genome.dropout))
        for block in stage:
            layers += conv_block(channels, block)
            channels = block.width
    if genome.dropout:
        layers.append(nn.Dropout(genome.dropout))
    layers += build_head(genome.head, channels, final_size(genome))
    return nn.Sequential(*layers)


class Normalize(nn.Module):
    """Map pixels in [0, 1] to the training set's zero mean and unit variance."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


def with_normalisation(model: nn.Module, mean: float, std: float) -> nn.Sequential:
    """The network that takes raw [0, 1] pixels: what is trained, evaluated and exported."""
    return nn.Sequential(Normalize(mean, std), model)


@lru_cache(maxsize=4096)
def macs_by_layer(genome: Genome) -> dict[str, int]:
    """Multiply-accumulates per top-level layer for one 28x28 image, as fvcore counts them.

    fvcore calls them flops, but counts one fused multiply-add as one (timm labels them MACs).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore traces with the deprecated torch.jit
        from fvcore.nn import FlopCountAnalysis  # heavy import, only needed here

        analysis = FlopCountAnalysis(build_model(genome).eval(), torch.zeros(1, IN_CHANNELS, INPUT_SIZE, INPUT_SIZE))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        return {name: int(n) for name, n in analysis.by_module().items() if name and "." not in name}


def count_macs(genome: Genome) -> int:
    """Total multiply-accumulates for one 28x28 image."""
    return sum(macs_by_layer(genome).values())
