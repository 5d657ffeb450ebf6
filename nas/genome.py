"""The architecture genome: one frozen, JSON-round-trippable description of a CNN.

A network is a sequence of stages at falling resolution. Each stage is a run of 3x3 conv blocks
(conv, BatchNorm, ReLU) closed by Dropout; a 2x2 max-pool sits between stages, optionally followed by a
1x1 transition conv that sets the width the next stage starts from (the seeds' "squeeze" step).
The head maps the last feature map to class scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.errors import UserError

HEADS = {
    "gap": "1x1 conv to the classes, then global average pool",
    "gap_fc": "global average pool, then a linear layer",
    "fc": "flatten the last feature map, then a linear layer",
}
INPUT_SIZE = 28
IN_CHANNELS = 1
NUM_CLASSES = 10


@dataclass(frozen=True)
class Stage:
    """Conv blocks at one resolution; `transition` is the 1x1 conv width entering it (0: none)."""

    widths: tuple[int, ...]
    transition: int = 0


@dataclass(frozen=True)
class Genome:
    """A whole architecture: everything `build_model` needs, nothing else."""

    stages: tuple[Stage, ...]
    dropout: float
    head: str

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a genome needs at least one stage")
        if any(not stage.widths for stage in self.stages):
            raise ValueError("every stage needs at least one conv block")
        if any(w <= 0 for stage in self.stages for w in stage.widths):
            raise ValueError("conv widths must be positive")
        if any(stage.transition < 0 for stage in self.stages):
            raise ValueError("transition widths must be 0 (none) or positive")
        if self.stages[0].transition:
            raise ValueError("the first stage has no pool before it, so no transition")
        if final_size(len(self.stages)) < 1:
            raise ValueError(f"{len(self.stages)} stages pool a {INPUT_SIZE}px input away to nothing")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must lie in [0, 1)")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (lists, not tuples); `from_dict` inverts it exactly."""
        stages = [{"widths": list(stage.widths), "transition": stage.transition} for stage in self.stages]
        return {"stages": stages, "dropout": self.dropout, "head": self.head}

    @classmethod
    def from_dict(cls, data: Any) -> Genome:
        """Parse and validate the JSON form; any problem is a UserError naming the field."""
        if not isinstance(data, dict):
            raise UserError("genome must be a JSON object with stages, dropout and head")
        expected = {"stages", "dropout", "head"}
        if set(data) != expected:
            missing, unknown = expected - set(data), set(data) - expected
            raise UserError(f"genome fields: missing {sorted(missing)}, unknown {sorted(unknown)}; fix the file")
        try:
            stages = tuple(_parse_stage(s) for s in _list(data["stages"], "stages"))
            dropout = data["dropout"]
            if isinstance(dropout, bool) or not isinstance(dropout, int | float):
                raise UserError("genome.dropout must be a number")
            if not isinstance(data["head"], str):
                raise UserError("genome.head must be a string")
            return cls(stages=stages, dropout=float(dropout), head=data["head"])
        except ValueError as error:
            raise UserError(f"invalid genome: {error}; fix the file") from None

    def describe(self) -> str:
        """A compact one-line form, e.g. `8-16|p t8 16-16|p 16 gap d0.05`."""
        parts = []
        for i, stage in enumerate(self.stages):
            prefix = "" if i == 0 else (f"p t{stage.transition} " if stage.transition else "p ")
            parts.append(prefix + "-".join(map(str, stage.widths)))
        return " | ".join(parts) + f" {self.head} d{self.dropout:.2f}"


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"genome.{name} must be a list")
    return value


def _parse_stage(data: Any) -> Stage:
    if not isinstance(data, dict) or set(data) - {"widths", "transition"} or "widths" not in data:
        raise UserError("each genome stage must be an object with widths (and optionally transition)")
    widths = _list(data["widths"], "stages[].widths")
    transition = data.get("transition", 0)
    if not all(_is_int(w) for w in widths) or not _is_int(transition):
        raise UserError("genome stage widths and transition must be integers")
    return Stage(widths=tuple(widths), transition=transition)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def final_size(num_stages: int) -> int:
    """Side length of the last feature map: each pool between stages halves it (floor)."""
    return INPUT_SIZE // 2 ** (num_stages - 1)


def _conv_bn_params(c_in: int, c_out: int, kernel: int) -> int:
    return c_in * c_out * kernel * kernel + 2 * c_out  # conv without bias; BatchNorm's scale and shift


def param_count(genome: Genome) -> int:
    """Exact number of trainable parameters of `build_model(genome)`, without building it."""
    total, channels = 0, IN_CHANNELS
    for stage in genome.stages:
        if stage.transition:
            total += _conv_bn_params(channels, stage.transition, 1)
            channels = stage.transition
        for width in stage.widths:
            total += _conv_bn_params(channels, width, 3)
            channels = width
    head_inputs = channels * (final_size(len(genome.stages)) ** 2 if genome.head == "fc" else 1)
    return total + head_inputs * NUM_CLASSES + NUM_CLASSES
