"""The architecture genome: one frozen, JSON-round-trippable description of a CNN.

A network is a sequence of stages; a 2x2 max-pool closes every stage but the last. A stage is a
run of conv blocks (conv, BatchNorm, ReLU), each 3x3 or 1x1 and each padded ("same": the map keeps
its size) or not ("valid": a 3x3 conv trims a pixel from every side). So the best hand designs are
genomes: a few padded or valid convs at 28 px, one pool, a 1x1 squeeze, then valid convs that
shrink the map to 5-7 px before the head. Dropout follows every pool and precedes the head.

A 3x3 block may be depthwise-separable (MobileNet's block: a 3x3 conv per input channel, then a
1x1 conv to the block's width, each with BatchNorm and ReLU): for c channels in and out it has
about 9c + c^2 weights instead of 9c^2, so under a tight budget it can be about twice as wide.
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
KERNELS = (3, 1)
INPUT_SIZE = 28
IN_CHANNELS = 1
NUM_CLASSES = 10


@dataclass(frozen=True)
class Block:
    """One conv, BatchNorm, ReLU."""

    width: int  # output channels
    kernel: int = 3  # 3, or 1 for a pointwise squeeze or expansion
    padded: bool = True  # "same" padding; False: "valid", the map shrinks by kernel - 1
    separable: bool = False  # a 3x3 block only: depthwise 3x3, BatchNorm, ReLU, then this 1x1 conv, BatchNorm, ReLU

    def describe(self) -> str:
        """`16` (3x3 padded), `16v` (3x3 valid), `16s` / `16vs` (the same, separable), `16x1` (1x1)."""
        if self.kernel == 1:
            return f"{self.width}x1"
        return f"{self.width}{'' if self.padded else 'v'}{'s' if self.separable else ''}"


Stage = tuple[Block, ...]  # conv blocks at one resolution


@dataclass(frozen=True)
class Genome:
    """A whole architecture: everything `build_model` needs, nothing else."""

    stages: tuple[Stage, ...]
    dropout: float
    head: str

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a genome needs at least one stage")
        if any(not stage for stage in self.stages):
            raise ValueError("every stage needs at least one conv block")
        blocks = [block for stage in self.stages for block in stage]
        if any(block.width <= 0 for block in blocks):
            raise ValueError("conv widths must be positive")
        if any(block.kernel not in KERNELS for block in blocks):
            raise ValueError(f"conv kernels must be {' or '.join(map(str, KERNELS))}")
        if any(block.separable and block.kernel == 1 for block in blocks):
            raise ValueError("only a 3x3 conv can be separable; a 1x1 conv is pointwise already")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must lie in [0, 1)")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        map_sizes(self)  # raises if the map shrinks away

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (lists, not tuples); `from_dict` inverts it exactly.

        A block says "separable" only when it is, so the records of plain convs read as before.
        """
        stages = [[_block_dict(b) for b in stage] for stage in self.stages]
        return {"stages": stages, "dropout": self.dropout, "head": self.head}

    @classmethod
    def from_dict(cls, data: Any) -> Genome:
        """Parse and validate the JSON form; any problem is a UserError naming the field.

        Stages written before blocks had kernels and padding ({"widths": [...], "transition": t})
        still load: a transition is a leading 1x1 block, every other block a padded 3x3.
        """
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
        """A compact one-line form, e.g. `8v-16v-16v | 8x1-16v-16v-16v gap d0.00` (| is a max-pool)."""
        stages = " | ".join("-".join(block.describe() for block in stage) for stage in self.stages)
        return f"{stages} {self.head} d{self.dropout:.2f}"


def _block_dict(block: Block) -> dict[str, Any]:
    plain = {"width": block.width, "kernel": block.kernel, "padded": block.padded}
    return {**plain, "separable": True} if block.separable else plain


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise UserError(f"genome.{name} must be a list")
    return value


BLOCK_FIELDS = {"width", "kernel", "padded", "separable"}


def _parse_stage(data: Any) -> Stage:
    if isinstance(data, dict):
        return _parse_legacy_stage(data)
    return tuple(_parse_block(block) for block in _list(data, "stages[]"))


def _parse_block(data: Any) -> Block:
    if not isinstance(data, dict) or "width" not in data or set(data) - BLOCK_FIELDS:
        raise UserError("each genome block must be an object with width (and optionally kernel, padded, separable)")
    width, kernel = data["width"], data.get("kernel", 3)
    padded, separable = data.get("padded", True), data.get("separable", False)
    if not _is_int(width) or not _is_int(kernel) or not isinstance(padded, bool) or not isinstance(separable, bool):
        raise UserError("genome block width and kernel must be integers, padded and separable true or false")
    return Block(width, kernel, padded, separable)


def _parse_legacy_stage(data: dict) -> Stage:
    if set(data) - {"widths", "transition"} or "widths" not in data:
        raise UserError("each genome stage must be a list of blocks (or, in older files, an object with widths)")
    widths = _list(data["widths"], "stages[].widths")
    transition = data.get("transition", 0)
    if not all(_is_int(w) for w in widths) or not _is_int(transition):
        raise UserError("genome stage widths and transition must be integers")
    if transition < 0:
        raise ValueError("transition widths must be 0 (none) or positive")
    return ((Block(transition, kernel=1),) if transition else ()) + tuple(Block(w) for w in widths)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def map_sizes(genome: Genome) -> list[int]:
    """Side length of the feature map after each block, pools applied; raises if it shrinks away."""
    size, sizes = INPUT_SIZE, []
    for i, stage in enumerate(genome.stages):
        if i:
            if size < 2:
                raise ValueError(f"stage {i + 1} follows a max-pool of a {size} px map; use fewer stages or pad")
            size //= 2
        for block in stage:
            size -= 0 if block.padded else block.kernel - 1
            if size < 1:
                raise ValueError(f"valid convs shrink the {INPUT_SIZE} px input away by stage {i + 1}; pad more")
            sizes.append(size)
    return sizes


def final_size(genome: Genome) -> int:
    """Side length of the last feature map, the head's input."""
    return map_sizes(genome)[-1]


def _conv_bn_params(c_in: int, c_out: int, kernel: int) -> int:
    return c_in * c_out * kernel * kernel + 2 * c_out  # conv without bias; BatchNorm's scale and shift


def _block_params(c_in: int, block: Block) -> int:
    if block.separable:  # the depthwise conv: one kxk filter per input channel, and its BatchNorm
        return c_in * block.kernel**2 + 2 * c_in + _conv_bn_params(c_in, block.width, 1)
    return _conv_bn_params(c_in, block.width, block.kernel)


def param_count(genome: Genome) -> int:
    """Exact number of trainable parameters of `build_model(genome)`, without building it."""
    total, channels = 0, IN_CHANNELS
    for stage in genome.stages:
        for block in stage:
            total += _block_params(channels, block)
            channels = block.width
    head_inputs = channels * (final_size(genome) ** 2 if genome.head == "fc" else 1)
    return total + head_inputs * NUM_CLASSES + NUM_CLASSES
