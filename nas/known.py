"""Known designs: the best published small nets, as genomes (known_designs.json), for a search to start from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nas.genome import Genome

KNOWN_DESIGNS = Path(__file__).with_name("known_designs.json")


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


def by_name(name: str) -> KnownDesign:
    return next(d for d in known_designs() if d.name == name)
