"""Print a genome's layer table (output shape, parameters, MACs) and its totals against the budget.

python -m nas.show results/mnist_20k/best.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nas import best
from nas.errors import ArgumentParser, cli
from nas.genome import IN_CHANNELS, INPUT_SIZE, Genome, param_count
from nas.model import build_model, macs_by_layer


def describe_layer(module: torch.nn.Module) -> str:
    """A short layer description: `Conv2d 8->16 3x3`, `Conv2d 8->8 3x3 depthwise`, `Dropout 0.05`, `Linear 160->10`."""
    name = type(module).__name__
    if isinstance(module, torch.nn.Conv2d):
        kernel = "x".join(map(str, module.kernel_size)) + (" depthwise" if module.groups > 1 else "")
        return f"{name} {module.in_channels}->{module.out_channels} {kernel}"
    if isinstance(module, torch.nn.Linear):
        return f"{name} {module.in_features}->{module.out_features}"
    if isinstance(module, torch.nn.Dropout):
        return f"{name} {module.p:.3f}"
    return name


def layer_table(genome: Genome) -> Table:
    """One row per layer, like torchsummary in the seeds, with fvcore's MACs beside the parameters."""
    model = build_model(genome).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
        for name, module in model.named_children()
    ]
    with torch.inference_mode():
        model(torch.zeros(1, IN_CHANNELS, INPUT_SIZE, INPUT_SIZE))
    for hook in hooks:
        hook.remove()
    macs = macs_by_layer(genome)
    table = Table(title=genome.describe())
    for column in ("#", "layer", "output shape", "params", "MACs"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, module in model.named_children():
        params = sum(p.numel() for p in module.parameters())
        table.add_row(
            name, describe_layer(module), " x ".join(map(str, shapes[name])), f"{params:,}", f"{macs.get(name, 0):,}"
        )
    table.add_section()
    table.add_row("", "total", "", f"{param_count(genome):,}", f"{sum(macs.values()):,}")
    return table


@cli
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="nas.show", description=__doc__.split("\n\n")[0])
    parser.add_argument("best", type=Path, help="best.json written by nas.search")
    args = parser.parse_args(argv)
    winner = best.load(args.best)
    console = Console(soft_wrap=True)
    console.print(layer_table(winner.genome))
    params = param_count(winner.genome)
    console.print(
        f"{params:,} of {winner.max_params:,} parameters ({100 * params / winner.max_params:.0f}% of the budget)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
