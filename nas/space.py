"""Search-space files: TOML read with tomllib into a validated, frozen dataclass.

Every problem is a UserError that names the file and the key. The space knows its smallest
architecture, so a budget no candidate can meet is reported before a single trial runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import UserError, read_user_text
from nas.genome import HEADS, INPUT_SIZE, KERNELS, Block, Genome, param_count
from nas.train import DEFAULT_AUGMENT_SHIFT, Recipe

# Inside the package, so an installed nas finds its default; the repository shows them as search_spaces/.
SPACES_DIR = Path(__file__).resolve().parent / "spaces"
DEFAULT_SPACE = SPACES_DIR / "mnist_20k.toml"
MAX_STAGES = 5  # a 28 px input halves to 1 px after four pools
MAX_EPOCHS = 19  # the seeds' spec: fewer than 20 epochs
PADDINGS = {"same": True, "valid": False}  # a block's padding choice: Block.padded
PADDING_NAMES = {padded: name for name, padded in PADDINGS.items()}
CONVS = {"full": False, "separable": True}  # a 3x3 block's conv choice: Block.separable
CONV_NAMES = {separable: name for name, separable in CONVS.items()}
# How a new study enqueues the known designs, each then scaled to fit: as published, and/or with
# every 3x3 conv but the first made separable (MobileNet's rule: the first conv sees one channel).
KNOWN_FORMS = ("published", "separable")

Range = tuple[float, float]  # [min, max], both inclusive
IntRange = tuple[int, int]


@dataclass(frozen=True)
class ArchitectureSpace:
    stages: tuple[int, ...]  # choices: number of stages; a 2x2 max-pool closes each but the last
    blocks_per_stage: IntRange  # conv blocks in each stage
    widths: tuple[int, ...]  # choices: output channels of each block
    kernels: tuple[int, ...]  # choices per block: 3, or 1 (a pointwise squeeze or expansion)
    padding: tuple[str, ...]  # choices per 3x3 block among PADDINGS
    dropout: Range  # one rate for the whole network, sampled uniformly
    heads: tuple[str, ...]  # choices among nas.genome.HEADS
    # Optional, so older spaces read as before: full 3x3 convs only, every known design as published.
    convs: tuple[str, ...] = ("full",)  # choices per 3x3 block among CONVS
    known_forms: tuple[str, ...] = ("published",)  # among KNOWN_FORMS
    known_designs: tuple[str, ...] = ()  # names in nas/known_designs.json to open with; unset: every one

    def can_draw(self, genome: Genome) -> bool:
        """Whether sampling can produce this architecture (its dropout aside: a rate is clipped into range)."""
        blocks = [block for stage in genome.stages for block in stage]
        return (
            len(genome.stages) in self.stages
            and all(self.blocks_per_stage[0] <= len(stage) <= self.blocks_per_stage[1] for stage in genome.stages)
            and all(block.width in self.widths and block.kernel in self.kernels for block in blocks)
            and all(PADDING_NAMES[block.padded] in self.padding for block in blocks if block.kernel > 1)
            and all(CONV_NAMES[block.separable] in self.convs for block in blocks if block.kernel > 1)
            and genome.head in self.heads
        )


@dataclass(frozen=True)
class TrainingSpace:
    max_lr: Range  # one-cycle peak learning rate, sampled log-uniformly
    batch_size: tuple[int, ...]  # choices: images per step (a bare number is the only choice)
    weight_decay: Range  # L2 on all weights; log-uniformly unless the range starts at 0
    augment_degrees: Range  # max random rotation; 0 with no shift turns augmentation off
    # Max random translation in pixels; optional: a space without it shifts up to 2 px, as all did before.
    augment_shift: Range = (DEFAULT_AUGMENT_SHIFT, DEFAULT_AUGMENT_SHIFT)
    # Max random change of size, a fraction; optional: a space without it never scales, as none did before.
    augment_scale: Range = (0.0, 0.0)


@dataclass(frozen=True)
class TrialBudget:
    epochs: int  # training epochs per search trial
    reports_per_epoch: int  # validation reports per epoch; each is a point where the pruner may stop a trial


@dataclass(frozen=True)
class RetrainPlan:
    """How the winner will be retrained, for the search to hold it to a time budget (optional table)."""

    epochs: int = MAX_EPOCHS  # nas.retrain's default for this space's winner
    # Seconds a retrain may take on the machine that searches, estimated from a few timed steps of
    # each candidate before it trains (TrainConfig.estimated_seconds); a slower one is pruned.
    max_seconds: float | None = None


@dataclass(frozen=True)
class SearchSpace:
    max_params: int  # trainable parameters; larger candidates are pruned before training
    architecture: ArchitectureSpace
    training: TrainingSpace
    trial: TrialBudget
    retrain: RetrainPlan = RetrainPlan()
    # The recipe every known design opens the study with, so they are compared on their architecture
    # (optional table; unset, each draws one as any trial does).
    known_recipe: Recipe | None = None
    max_macs: int | None = None  # multiply-accumulates per image; larger candidates are pruned before training
    search_seconds: float | None = None  # wall time after which a search starts no trial (running ones finish)
    path: str = ""  # where it was read from
    text: str = ""  # the file as read, kept so results record exactly the space that was searched

    @property
    def sha256(self) -> str:
        """Of the file's settings, not its text: a study records it and refuses to resume with a
        different space, but not over a comment edited or a line re-wrapped."""
        settings = json.dumps(tomllib.loads(self.text), sort_keys=True)
        return hashlib.sha256(settings.encode()).hexdigest()

    def is_recorded_as(self, sha256: str) -> bool:
        """Whether a study's recorded hash is this space's; studies made before `sha256` hashed the
        settings recorded the text's, and still resume with the very same file."""
        return sha256 in (self.sha256, hashlib.sha256(self.text.encode()).hexdigest())

    def smallest_genome(self) -> Genome:
        """The architecture with the fewest parameters this space can produce."""
        arch = self.architecture
        width, blocks = min(arch.widths), arch.blocks_per_stage[0]
        candidates = []
        choices = itertools.product(arch.stages, arch.heads, arch.kernels, arch.padding, arch.convs)
        for n, head, kernel, padding, conv in choices:
            block = Block(width, kernel, PADDINGS[padding], separable=kernel > 1 and CONVS[conv])
            try:
                candidates.append(Genome(stages=((block,) * blocks,) * n, dropout=arch.dropout[0], head=head))
            except ValueError:
                continue  # valid convs shrink the map away at this depth
        if not candidates:
            raise UserError(
                f"{self.path}: no architecture of the smallest depth fits a {INPUT_SIZE} px input; "
                "allow fewer stages or blocks, or same padding"
            )
        return min(candidates, key=param_count)

    def with_overrides(
        self,
        max_params: int | None = None,
        trial_epochs: int | None = None,
        max_macs: int | None = None,
        max_retrain_seconds: float | None = None,
    ) -> SearchSpace:
        """The same space with command-line overrides of the budgets and the trial length."""
        space = self
        if max_params is not None:
            space = dataclasses.replace(space, max_params=max_params)
        if max_macs is not None:
            space = dataclasses.replace(space, max_macs=max_macs)
        if max_retrain_seconds is not None:
            retrain = dataclasses.replace(space.retrain, max_seconds=max_retrain_seconds)
            space = dataclasses.replace(space, retrain=retrain)
        if trial_epochs is not None:
            space = dataclasses.replace(space, trial=dataclasses.replace(space.trial, epochs=trial_epochs))
        return space


# The file's layout: [budget] max_params (optionally max_macs, search_seconds), then one table per section
# dataclass; [retrain] and [known_recipe] may be left out.
OPTIONAL_BUDGETS = {"max_macs": int, "search_seconds": float}
SECTIONS = {"architecture": ArchitectureSpace, "training": TrainingSpace, "trial": TrialBudget}
OPTIONAL_SECTIONS = {"retrain": RetrainPlan, "known_recipe": Recipe}


def _type_name(kind: Any) -> str:
    if kind == Range:
        return "[min, max] finite numbers"
    if kind == IntRange:
        return "[min, max] integers"
    if typing.get_origin(kind) is tuple:
        name = typing.get_args(kind)[0].__name__
        return f"a non-empty list of {name}s, or one {name}"
    return "an integer" if kind is int else "a finite number"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check one TOML value against a field's annotation; return it in the dataclass's form."""

    def is_a(v: Any, scalar: type) -> bool:
        if isinstance(v, bool):
            return False
        return isinstance(v, int | float) and math.isfinite(v) if scalar is float else isinstance(v, scalar)

    args = typing.get_args(kind)
    if type(None) in args:  # optional: absent from the file when unset, so a value is the other type
        kind = next(arg for arg in args if arg is not type(None))
        args = typing.get_args(kind)
    if kind in (Range, IntRange):
        scalar = args[0]
        if not (isinstance(value, list) and len(value) == 2 and all(is_a(v, scalar) for v in value)):
            raise UserError(f"{where} must be {_type_name(kind)}")
        if value[0] > value[1]:
            raise UserError(f"{where}: min {value[0]} is greater than max {value[1]}; swap them")
        return (scalar(value[0]), scalar(value[1]))
    if typing.get_origin(kind) is tuple:
        scalar = args[0]
        if is_a(value, scalar):
            value = [value]  # one choice, written without brackets
        if not isinstance(value, list) or not all(is_a(v, scalar) for v in value):
            raise UserError(f"{where} must be {_type_name(kind)}")
        if not value:
            raise UserError(f"{where} is an empty list; give at least one choice")
        return tuple(dict.fromkeys(value))  # duplicates would only skew the sampler
    if not is_a(value, kind):
        raise UserError(f"{where} must be {_type_name(kind)}")
    return kind(value)


def _section(table: Any, cls: type, where: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"{where} must be a table")
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(fields)}")
    optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    missing = [name for name in fields if name not in table and name not in optional]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    return cls(
        **{name: _coerce(table[name], kind, f"{where}.{name}") for name, kind in fields.items() if name in table}
    )


def _check_values(space: SearchSpace, where: str) -> None:
    """Constraints that types alone do not express."""
    arch, training, trial = space.architecture, space.training, space.trial
    checks = [
        (space.max_params > 0, "budget.max_params must be positive"),
        (space.max_macs is None or space.max_macs > 0, "budget.max_macs must be positive"),
        (space.search_seconds is None or space.search_seconds > 0, "budget.search_seconds must be positive"),
        (
            all(1 <= n <= MAX_STAGES for n in arch.stages),
            f"architecture.stages must lie in 1..{MAX_STAGES} ({INPUT_SIZE} px input)",
        ),
        (arch.blocks_per_stage[0] >= 1, "architecture.blocks_per_stage must start at 1 or more"),
        (all(w > 0 for w in arch.widths), "architecture.widths must be positive"),
        (set(arch.kernels) <= set(KERNELS), f"architecture.kernels must be among {', '.join(map(str, KERNELS))}"),
        (set(arch.padding) <= set(PADDINGS), f"architecture.padding must be among {', '.join(PADDINGS)}"),
        (set(arch.convs) <= set(CONVS), f"architecture.convs must be among {', '.join(CONVS)}"),
        (set(arch.known_forms) <= set(KNOWN_FORMS), f"architecture.known_forms must be among {', '.join(KNOWN_FORMS)}"),
        (
            "separable" not in arch.known_forms or "separable" in arch.convs,
            'architecture.known_forms has "separable", so convs must offer "separable" too',
        ),
        (0 <= arch.dropout[0] and arch.dropout[1] < 1, "architecture.dropout must lie in [0, 1)"),
        (set(arch.heads) <= set(HEADS), f"architecture.heads must be among {', '.join(HEADS)}"),
        (training.max_lr[0] > 0, "training.max_lr must be positive (it is sampled log-uniformly)"),
        (min(training.batch_size) >= 1, "training.batch_size must be at least 1"),
        (training.weight_decay[0] >= 0, "training.weight_decay must not be negative"),
        (training.augment_degrees[0] >= 0, "training.augment_degrees must not be negative"),
        (training.augment_shift[0] >= 0, "training.augment_shift must not be negative"),
        (0 <= training.augment_scale[0] and training.augment_scale[1] < 1, "training.augment_scale must lie in [0, 1)"),
        (trial.epochs >= 1, "trial.epochs must be at least 1"),
        (trial.reports_per_epoch >= 1, "trial.reports_per_epoch must be at least 1"),
        (space.retrain.epochs >= 1, "retrain.epochs must be at least 1"),
        (space.retrain.max_seconds is None or space.retrain.max_seconds > 0, "retrain.max_seconds must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(f"{where}: {message}")
    if space.known_recipe is not None:
        _check_known_recipe(space.known_recipe, training, where)


def _check_known_recipe(recipe: Recipe, training: TrainingSpace, where: str) -> None:
    """The known designs' recipe must be one the space could draw: every trial of a study is."""
    if recipe.batch_size not in training.batch_size:
        raise UserError(
            f"{where}: known_recipe.batch_size {recipe.batch_size} is not among training.batch_size "
            f"({', '.join(map(str, training.batch_size))}); pick one of those or add it there"
        )
    for knob in ("max_lr", "weight_decay", "augment_degrees", "augment_shift", "augment_scale"):
        low, high = getattr(training, knob)
        if not low <= getattr(recipe, knob) <= high:
            raise UserError(
                f"{where}: known_recipe.{knob} {getattr(recipe, knob)} is outside training.{knob} [{low}, {high}]; "
                "bring it into the range or widen the range"
            )


def parse_space(text: str, where: str) -> SearchSpace:
    """Parse and validate a search space from TOML text; `where` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{where}: not valid TOML ({error}); fix the syntax") from None
    expected = {"budget", *SECTIONS}
    unknown = sorted(set(document) - expected - set(OPTIONAL_SECTIONS))
    if unknown:
        known = sorted({*expected, *OPTIONAL_SECTIONS})
        raise UserError(f"{where}: unknown table [{unknown[0]}]; known tables are {', '.join(known)}")
    missing = sorted(expected - set(document))
    if missing:
        raise UserError(f"{where}: missing table [{missing[0]}]")
    budget = document["budget"]
    if not isinstance(budget, dict) or "max_params" not in budget or set(budget) - {"max_params", *OPTIONAL_BUDGETS}:
        raise UserError(
            f"{where}: [budget] must hold max_params and optionally {' and '.join(OPTIONAL_BUDGETS)}, nothing else"
        )
    space = SearchSpace(
        max_params=_coerce(budget["max_params"], int, f"{where}: budget.max_params"),
        **{
            key: _coerce(budget[key], kind, f"{where}: budget.{key}")
            for key, kind in OPTIONAL_BUDGETS.items()
            if key in budget
        },
        path=where,
        text=text,
        **{
            name: _section(document[name], cls, f"{where}: {name}")
            for name, cls in {**SECTIONS, **OPTIONAL_SECTIONS}.items()
            if name in document
        },
    )
    _check_values(space, where)
    return space


def load_space(
    path: Path | str = DEFAULT_SPACE,
    max_params: int | None = None,
    trial_epochs: int | None = None,
    max_macs: int | None = None,
    max_retrain_seconds: float | None = None,
) -> SearchSpace:
    """Read a search-space file, apply command-line overrides, and check the budget is reachable."""
    path = Path(path)
    text = read_user_text(path, "the search space", "check --space, and save the file as UTF-8")
    # Name it relative to the working directory when inside it, so results read the same on any clone.
    where = os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    space = parse_space(text, where).with_overrides(max_params, trial_epochs, max_macs, max_retrain_seconds)
    check_budget_reachable(space)
    return space


def check_budget_reachable(space: SearchSpace) -> None:
    """Refuse a budget below the smallest architecture: every trial would be pruned."""
    smallest = space.smallest_genome()
    if param_count(smallest) > space.max_params:
        raise UserError(
            f"{space.path}: the smallest architecture the space allows ({smallest.describe()}) has "
            f"{param_count(smallest):,} parameters, over the budget of {space.max_params:,}; "
            "raise the budget or allow smaller widths or fewer blocks"
        )
