"""best.json, the record a search leaves for the retrain: its one writer and its one reader.

The search builds a `Best` from its winning trial and writes it (`write`); nas.retrain and
nas.show read it back (`load`). Every problem in a file is one UserError that names the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nas import results
from nas.errors import UserError, read_user_text
from nas.genome import Genome, param_count
from nas.space import MAX_EPOCHS, SearchSpace, parse_space
from nas.train import DEFAULT_AUGMENT_DEGREES, DEFAULT_AUGMENT_SHIFT, Recipe

FIX = "use a best.json written by nas.search"
RECORD = ("genome", "params", "max_params", "train", "data")  # what `parse` reads into fields; the rest is `found`


@dataclass(frozen=True)
class DataSplit:
    """Which images trained and validated the winner, so the retrain splits them alike."""

    dir: str | None  # None: the MNIST bundled with the package, wherever it is installed
    val_size: int
    split_seed: int


@dataclass(frozen=True)
class Best:
    genome: Genome
    max_params: int
    recipe: Recipe
    data: DataSplit
    # How it was found (study, trial, its accuracy and MACs, the space, the command, versions):
    # written for people and provenance; only the space is read back.
    found: dict[str, Any] = field(default_factory=dict)

    def space(self) -> SearchSpace | None:
        """The search space the winner was found in, as `space_record` wrote it; None in a file that has none."""
        recorded = self.found.get("space")
        if not isinstance(recorded, dict) or not isinstance(recorded.get("text"), str):
            return None
        return parse_space(recorded["text"], f"the search space recorded in best.json ({recorded.get('path')})")

    @property
    def retrain_epochs(self) -> int:
        """How long nas.retrain trains the winner by default: as its space plans, else the seeds' spec allows."""
        space = self.space()
        return space.retrain.epochs if space is not None else MAX_EPOCHS

    def to_dict(self) -> dict[str, Any]:
        return {
            "genome": self.genome.to_dict(),
            "params": param_count(self.genome),
            "max_params": self.max_params,
            "train": asdict(self.recipe),
            "data": {"dir": self.data.dir, "val_size": self.data.val_size, "split_seed": self.data.split_seed},
            **self.found,
        }

    def write(self, path: Path) -> None:
        results.write_json(path, self.to_dict())


def space_record(space: SearchSpace) -> dict[str, str]:
    """best.json's `space` entry: the file searched, whole, so a retrain can read it back (`Best.space`)."""
    return {"path": space.path, "sha256": space.sha256, "text": space.text}


def parse(text: str, where: str) -> Best:
    """Validate a best.json document: every problem is one UserError naming the field."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg} at line {error.lineno}); fix or regenerate it") from None
    if not isinstance(document, dict):
        raise UserError(f"{where}: expected a JSON object; {FIX}")
    try:
        genome = Genome.from_dict(_field(document, "genome", dict, where))
    except UserError as error:
        raise UserError(f"{where}: {error}") from None

    def knob(name: str, before_it_was_searched: float) -> float:
        """A recipe knob; a best.json written before the search drew it trained with the fixed value."""
        if name not in _field(document, "train", dict, where):
            return before_it_was_searched
        return float(_field(document, f"train.{name}", (int, float), where))

    best = Best(
        genome=genome,
        max_params=_field(document, "max_params", int, where),
        recipe=Recipe(
            max_lr=float(_field(document, "train.max_lr", (int, float), where)),
            batch_size=_field(document, "train.batch_size", int, where),
            weight_decay=float(_field(document, "train.weight_decay", (int, float), where)),
            augment_degrees=knob("augment_degrees", DEFAULT_AUGMENT_DEGREES),
            augment_shift=knob("augment_shift", DEFAULT_AUGMENT_SHIFT),
            augment_scale=knob("augment_scale", 0.0),
        ),
        data=DataSplit(
            dir=_field(document, "data.dir", (str, type(None)), where),
            val_size=_field(document, "data.val_size", int, where),
            split_seed=_field(document, "data.split_seed", int, where),
        ),
        found={key: value for key, value in document.items() if key not in RECORD},
    )
    params = param_count(genome)
    if params > best.max_params:
        raise UserError(
            f"{where}: the genome has {params:,} parameters, over its budget of {best.max_params:,}; "
            "search again or raise max_params"
        )
    recipe = best.recipe
    if not (
        0 < recipe.max_lr < math.inf
        and recipe.batch_size > 0
        and 0 <= recipe.weight_decay < math.inf
        and 0 <= recipe.augment_degrees < math.inf
        and 0 <= recipe.augment_shift < math.inf
        and 0 <= recipe.augment_scale < 1
    ):
        raise UserError(
            f"{where}: train.max_lr and batch_size must be positive, weight_decay, augment_degrees and "
            "augment_shift finite and not negative, augment_scale in [0, 1); fix or regenerate it"
        )
    if best.data.val_size < 1:
        raise UserError(f"{where}: data.val_size must be positive; fix or regenerate it")
    return best


def load(path: Path) -> Best:
    """Read and validate a best.json file."""
    return parse(read_user_text(path, "the best.json", "pass the best.json a search wrote"), str(path))


def _field(document: dict, dotted: str, kind: type | tuple[type, ...], where: str) -> Any:
    value: Any = document
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise UserError(f"{where}: missing field {dotted!r}; {FIX}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"{where}: field {dotted!r} has the wrong type; {FIX}")
    return value
