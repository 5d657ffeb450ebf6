"""Property-based: whatever document arrives, the parsers raise only the documented UserError."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nas.best import parse as parse_best
from nas.errors import UserError
from nas.space import DEFAULT_SPACE, parse_space

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
VALID_BEST = {
    "genome": {"stages": [{"widths": [8, 16]}, {"widths": [16], "transition": 8}], "dropout": 0.1, "head": "gap"},
    "max_params": 20_000,
    "train": {"max_lr": 0.05, "batch_size": 128, "weight_decay": 5e-4},
    "data": {"dir": None, "val_size": 10_000, "split_seed": 0},
}
BEST_PATHS = [
    ("genome",), ("genome", "stages"), ("genome", "dropout"), ("genome", "head"), ("max_params",),
    ("train",), ("train", "max_lr"), ("train", "batch_size"), ("data",), ("data", "val_size"), (),
]  # fmt: skip


def replaced(document: dict, path: tuple, value) -> object:
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def accepts_or_explains(parse, text: str) -> None:
    try:
        parse(text, "doc")
    except UserError as error:
        assert "\n" not in str(error)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(BEST_PATHS), value=json_values)
def test_best_json_parser_raises_only_user_errors(path, value):
    accepts_or_explains(parse_best, json.dumps(replaced(VALID_BEST, path, value)))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_best_json_parser_on_arbitrary_text(text):
    accepts_or_explains(parse_best, text)


SPACE_LINES = DEFAULT_SPACE.read_text().splitlines()
toml_values = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.booleans().map(lambda b: str(b).lower()),
    st.text(alphabet="abc_ ", max_size=6).map(json.dumps),
    st.lists(st.integers(-5, 64), max_size=4).map(str),
    st.lists(st.floats(-1, 2, allow_nan=False), max_size=3).map(str),
    st.lists(st.text(alphabet="gapfc_", max_size=5), max_size=3).map(json.dumps),
    st.just("{ a = 1 }"),
)


@settings(max_examples=300, deadline=None)
@given(line=st.sampled_from([i for i, line in enumerate(SPACE_LINES) if " = " in line]), value=toml_values)
def test_space_parser_raises_only_user_errors(line, value):
    lines = list(SPACE_LINES)
    key = lines[line].split(" = ")[0]
    lines[line] = f"{key} = {value}"
    accepts_or_explains(parse_space, "\n".join(lines))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_space_parser_on_arbitrary_text(text):
    accepts_or_explains(parse_space, text)
