"""Mutations: one small change to a good candidate, so a short search explores next to its best trials.

A 15-minute search on two cores trains a dozen candidates or so. Drawn blind from a space this
large, most of them are far from the known designs that open the study and lose to them at the
first report; a mutation of the best ones (one block wider or narrower, one more or fewer, its
padding, kernel or conv, the head, or a nudge to the recipe) starts where the search already is
(regularised evolution's step, Real et al. 2019). Pure functions of a seeded random generator.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from nas.genome import Block, Genome, param_count
from nas.model import count_macs
from nas.space import CONVS, PADDINGS, SearchSpace
from nas.train import Recipe

ATTEMPTS = 50  # draws before giving up on a parent whose every neighbour is over a budget


@dataclasses.dataclass(frozen=True)
class Mutant:
    genome: Genome
    recipe: Recipe
    change: str  # what differs from the parent, its kind first: "width s2 b1 16->20", "recipe lr ..."


def _replace_block(genome: Genome, s: int, b: int, blocks: tuple[Block, ...]) -> Genome:
    """`genome` with stage s's block b replaced by `blocks` (none removes it, two insert one)."""
    stage = genome.stages[s]
    stages = genome.stages[:s] + (stage[:b] + blocks + stage[b + 1 :],) + genome.stages[s + 1 :]
    return dataclasses.replace(genome, stages=stages)


def _width(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    s, b, block = _pick_block(genome, rng)
    widths = sorted(space.architecture.widths)
    here = widths.index(block.width)
    step = rng.choice([-1, 1])
    if not 0 <= here + step < len(widths):
        return None
    new = dataclasses.replace(block, width=widths[here + step])
    return _replace_block(genome, s, b, (new,)), f"width s{s + 1} b{b + 1} {block.width}->{new.width}"


def _flip(genome: Genome, rng: random.Random, kind: str, field: str, choices: tuple) -> tuple[Genome, str] | None:
    """One 3x3 block's two-way choice (`field` of Block: padded, separable) the other way, if the space has both."""
    s, b, block = _pick_block(genome, rng)
    if block.kernel == 1 or len(choices) < 2:
        return None
    new = dataclasses.replace(block, **{field: not getattr(block, field)})
    return _replace_block(genome, s, b, (new,)), f"{kind} s{s + 1} b{b + 1} {block.describe()}->{new.describe()}"


def _padding(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    return _flip(genome, rng, "padding", "padded", space.architecture.padding)


def _kernel(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    s, b, block = _pick_block(genome, rng)
    if len(space.architecture.kernels) < 2:
        return None
    if block.kernel == 1:  # a new 3x3 draws its padding and conv, as sampling would
        arch = space.architecture
        new = Block(block.width, 3, PADDINGS[rng.choice(arch.padding)], CONVS[rng.choice(arch.convs)])
    else:
        new = Block(block.width, 1, padded=True)  # a 1x1 conv is drawn padded
    return _replace_block(genome, s, b, (new,)), f"kernel s{s + 1} b{b + 1} {block.describe()}->{new.describe()}"


def _conv(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    return _flip(genome, rng, "conv", "separable", space.architecture.convs)


def _insert(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    s, b, block = _pick_block(genome, rng)
    if len(genome.stages[s]) >= space.architecture.blocks_per_stage[1]:
        return None
    return _replace_block(genome, s, b, (block, block)), f"insert s{s + 1} b{b + 1} {block.describe()}"


def _remove(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    s, b, block = _pick_block(genome, rng)
    if len(genome.stages[s]) <= space.architecture.blocks_per_stage[0]:
        return None
    return _replace_block(genome, s, b, ()), f"remove s{s + 1} b{b + 1} {block.describe()}"


def _head(genome: Genome, space: SearchSpace, rng: random.Random) -> tuple[Genome, str] | None:
    others = [head for head in space.architecture.heads if head != genome.head]
    if not others:
        return None
    head = rng.choice(others)
    return dataclasses.replace(genome, head=head), f"head {genome.head}->{head}"


def _pick_block(genome: Genome, rng: random.Random) -> tuple[int, int, Block]:
    s, b = rng.choice([(s, b) for s, stage in enumerate(genome.stages) for b in range(len(stage))])
    return s, b, genome.stages[s][b]


ARCHITECTURE_MUTATIONS: tuple[Callable[[Genome, SearchSpace, random.Random], tuple[Genome, str] | None], ...] = (
    _width, _width, _padding, _kernel, _conv, _insert, _remove, _head,
)  # fmt: skip  # widths twice: the commonest fine-tuning of a hand design


def nudge_recipe(genome: Genome, recipe: Recipe, space: SearchSpace, rng: random.Random) -> tuple[Genome, Recipe, str]:
    """Learning rate and weight decay times up to 1.5 either way, rotation up to 2 degrees, shift up
    to half a pixel, scaling up to 0.03, dropout up to 0.02, each kept in the space's range. The batch
    size stays: another would change what the learning rate means."""
    training, dropout_range = space.training, space.architecture.dropout

    def clip(value: float, bounds: tuple[float, float]) -> float:
        return min(max(value, bounds[0]), bounds[1])

    def times(value: float, bounds: tuple[float, float]) -> float:
        return clip(value * math.exp(rng.uniform(-math.log(1.5), math.log(1.5))), bounds)

    new = dataclasses.replace(
        recipe,
        max_lr=times(recipe.max_lr, training.max_lr),
        weight_decay=times(recipe.weight_decay, training.weight_decay),
        augment_degrees=clip(recipe.augment_degrees + rng.uniform(-2, 2), training.augment_degrees),
        augment_shift=clip(recipe.augment_shift + rng.uniform(-0.5, 0.5), training.augment_shift),
        augment_scale=clip(recipe.augment_scale + rng.uniform(-0.03, 0.03), training.augment_scale),
    )
    dropout = clip(genome.dropout + rng.uniform(-0.02, 0.02), dropout_range)
    change = (
        f"recipe lr {recipe.max_lr:.3g}->{new.max_lr:.3g}, wd {recipe.weight_decay:.2g}->{new.weight_decay:.2g}, "
        f"rotation {recipe.augment_degrees:.1f}->{new.augment_degrees:.1f}, "
        f"shift {recipe.augment_shift:.1f}->{new.augment_shift:.1f}, "
        f"scale {recipe.augment_scale:.2f}->{new.augment_scale:.2f}, "
        f"dropout {genome.dropout:.3f}->{dropout:.3f}"
    )
    return dataclasses.replace(genome, dropout=dropout), new, change


def fits(genome: Genome, space: SearchSpace) -> bool:
    """Whether sampling could draw it and it is within the parameter and MACs budgets."""
    return (
        space.architecture.can_draw(genome)
        and param_count(genome) <= space.max_params
        and (space.max_macs is None or count_macs(genome) <= space.max_macs)
    )


def mutate(genome: Genome, recipe: Recipe, space: SearchSpace, rng: random.Random) -> Mutant | None:
    """One change to the architecture (three times in four) or a nudge to the recipe, within the
    space and its budgets; None if ATTEMPTS draws found no such neighbour."""
    for _ in range(ATTEMPTS):
        if rng.random() < 0.25:
            return Mutant(*nudge_recipe(genome, recipe, space, rng))
        try:
            mutated = rng.choice(ARCHITECTURE_MUTATIONS)(genome, space, rng)
        except ValueError:  # valid convs shrink the map away
            continue
        if mutated is not None and fits(mutated[0], space):
            return Mutant(mutated[0], recipe, mutated[1])
    return None
