"""Known designs: the best published small nets, as genomes (known_designs.json), for a search to start from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from nas.errors import UserError
from nas.genome import Genome
from nas.mutation import fits
from nas.space import SearchSpace

KNOWN_DESIGNS = Path(__file__).with_name("known_designs.json")
WIDEST, NARROWEST = 2.0, 0.25  # the width multipliers tried, from the widest down, to fit a design to a space


@dataclass(frozen=True)
class KnownDesign:
    name: str
    source: str
    published_params: int  # as the authors count their layers
    published_test_accuracy: float  # their single run, final epoch
    note: str  # why the genome's parameter count differs from the published one
    genome: Genome


def known_designs() -> list[KnownDesign]:
    """Every design in the file, as shipped with the package."""
    designs = json.loads(KNOWN_DESIGNS.read_text())["designs"]
    return [KnownDesign(**{**d, "genome": Genome.from_dict(d["genome"])}) for d in designs]


def scaled(genome: Genome, factor: float, widths: tuple[int, ...]) -> Genome:
    """Every block's width times `factor`, rounded down to one of `widths` (to the smallest if none
    is that narrow): a width multiplier, MobileNet's alpha, snapped to a space's choices."""
    choices = sorted(widths)

    def snap(width: int) -> int:
        return max([w for w in choices if w <= width * factor], default=choices[0])

    stages = tuple(tuple(dataclasses.replace(b, width=snap(b.width)) for b in stage) for stage in genome.stages)
    return dataclasses.replace(genome, stages=stages)


def separable(genome: Genome) -> Genome:
    """Every 3x3 block but the network's first made depthwise-separable: MobileNet's form of a design."""
    stages = tuple(
        tuple(
            dataclasses.replace(block, separable=block.kernel > 1 and (s, b) != (0, 0)) for b, block in enumerate(stage)
        )
        for s, stage in enumerate(genome.stages)
    )
    return dataclasses.replace(genome, stages=stages)


def scaled_to_budget(design: KnownDesign, space: SearchSpace) -> KnownDesign | None:
    """The design as a study of `space` runs it: at the widest multiplier, from WIDEST down in steps of
    0.05, that fits the space and budgets; renamed like "NAME x1.40" unless that leaves it as published;
    None if none fits.

    A design from a smaller budget, widened, uses what the budget allows (EfficientNet's width
    scaling); one from a larger budget, narrowed, starts a 5k search next to the best known designs.
    """
    for percent in range(int(WIDEST * 100), int(NARROWEST * 100) - 1, -5):
        genome = scaled(design.genome, percent / 100, space.architecture.widths)
        if fits(genome, space):
            name = design.name if genome == design.genome else f"{design.name} x{percent / 100:.2f}"
            return dataclasses.replace(design, name=name, genome=genome)
    return None


def in_forms(design: KnownDesign, forms: tuple[str, ...]) -> list[KnownDesign]:
    """The design in each of `forms` (nas.space.KNOWN_FORMS): as published, and "NAME separable"."""
    published = [design] if "published" in forms else []
    if "separable" not in forms:
        return published
    return [*published, dataclasses.replace(design, name=f"{design.name} separable", genome=separable(design.genome))]


def designs_to_beat(space: SearchSpace) -> list[KnownDesign]:
    """Each known design the space opens with, in the space's known forms, as a study of this space
    runs it (see `scaled_to_budget`), in the file's order."""
    designs = opened_with(space)
    forms = [form for design in designs for form in in_forms(design, space.architecture.known_forms)]
    return [fitted for form in forms if (fitted := scaled_to_budget(form, space)) is not None]


def opened_with(space: SearchSpace) -> list[KnownDesign]:
    """The known designs the space names in `known_designs`, or all of them if it names none."""
    designs, names = known_designs(), space.architecture.known_designs
    known = {design.name for design in designs}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(
            f"{space.path}: architecture.known_designs names {unknown[0]!r}, which is not a known design; "
            f"name some of: {', '.join(design.name for design in designs)}"
        )
    return [design for design in designs if not names or design.name in names]


def by_name(name: str, space: SearchSpace | None = None) -> KnownDesign:
    """The design called `name`, as published, or as `space` runs it ("NAME x0.80" names a scaled one)."""
    designs = known_designs() + (designs_to_beat(space) if space is not None else [])
    found = next((d for d in designs if d.name == name), None)
    if found is None:
        names = ", ".join(dict.fromkeys(d.name for d in designs))
        raise UserError(f"no known design {name!r} in this search space; pass one of: {names}")
    return found
