"""A sweep of bad inputs through the commands: every mutation of a space file, a best.json or an IDX
header ends with exit code 2 and one line on stderr, and writes no file.

Systematic rather than a list: every key of the shipped space files and of a best.json gets every
kind of value, every header field of every IDX file gets every edge value, and each file is also
re-encoded and cut short. A valid mutation still exits 2 here: the data directory is bad too.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nas import bench, rank, retrain, search, show
from nas.data import FILE_STEMS
from nas.space import SPACES_DIR
from tests.helpers import best_json

TOML_VALUES = [
    "-1", "0", "1", "2", "4294967296", "100000000000000000000", "0.5", "-0.0", "1e308", "inf", "nan", "true",
    '"text"', '""', "[]", "[[]]", "[0]", "[-1, 5]", "[5, -1]", "[1, 2, 3]", '[1, "a"]', "[0.1, 0.9]",
    '["gap", "nope"]', "{ a = 1 }", "1979-05-27",
]  # fmt: skip
JSON_VALUES = [
    None, True, -1, 0, 1, 2**31, 10**30, 0.5, -0.0, 1e308, float("inf"), float("nan"), "", "text", "/nonexistent",
    [], [0], [1, 2], [{}], {}, {"widths": [8]}, {"widths": [0]}, {"widths": [8], "transition": -1},
    {"width": 8}, {"width": 0}, {"width": 8, "kernel": 2}, [{"width": 8, "padded": False}] * 20,
]  # fmt: skip
BEST_KEYS = [
    ("genome",), ("genome", "stages"), ("genome", "stages", 0), ("genome", "stages", 0, 0),
    ("genome", "stages", 0, 0, "width"), ("genome", "stages", 1, 0, "kernel"), ("genome", "stages", 0, 1, "padded"),
    ("genome", "dropout"), ("genome", "head"), ("max_params",), ("train",), ("train", "max_lr"),
    ("train", "batch_size"), ("train", "weight_decay"), ("train", "augment_degrees"), ("data",),
    ("data", "dir"), ("data", "val_size"), ("data", "split_seed"),
]  # fmt: skip
HEADER_VALUES = [0, 1, 2, 27, 29, 255, 256, 2**31, 2**32 - 1]


def encodings(text: str) -> Iterator[tuple[str, bytes]]:
    """The same file in encodings a user's editor might save it in, and cut short."""
    yield "utf-16", text.encode("utf-16")
    yield "latin-1 comment", ("# café\n" + text).encode("latin-1")
    yield "utf-8 bom", b"\xef\xbb\xbf" + text.encode()
    yield "binary", bytes(range(256))
    yield "empty", b""
    raw = text.encode()
    for cut in range(0, len(raw), max(1, len(raw) // 12)):
        yield f"cut at {cut}", raw[:cut]


def space_mutations() -> Iterator[tuple[str, bytes]]:
    for path in sorted(SPACES_DIR.glob("*.toml")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if " = " not in line:
                continue
            key = line.split(" = ")[0]
            for value in TOML_VALUES:
                mutated = [*lines[:number], f"{key} = {value}", *lines[number + 1 :]]
                yield f"{path.name} {key} = {value}", "\n".join(mutated).encode()
            yield f"{path.name} without {key}", "\n".join(lines[:number] + lines[number + 1 :]).encode()
        for name, payload in encodings(path.read_text()):
            yield f"{path.name} {name}", payload


def edited(document: dict, keys: tuple, value: object = None, delete: bool = False) -> bytes:
    """The document with the value at `keys` replaced, or deleted."""
    copy = json.loads(json.dumps(document))
    target = copy
    for key in keys[:-1]:
        target = target[key]
    if delete:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return json.dumps(copy).encode()


def best_mutations(document: dict) -> Iterator[tuple[str, bytes]]:
    for keys in BEST_KEYS:
        name = ".".join(map(str, keys))
        for value in JSON_VALUES:
            yield f"{name} = {value!r}", edited(document, keys, value)
        yield f"without {name}", edited(document, keys, delete=True)
    yield from encodings(json.dumps(document))


def idx_mutations(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """Every 4-byte header field (magic, then each dimension) set to each edge value; the file cut short."""
    ndim = raw[3]
    for field in range(1 + ndim):
        for value in HEADER_VALUES:
            yield f"header field {field} = {value}", raw[: 4 * field] + value.to_bytes(4, "big") + raw[4 * field + 4 :]
    for byte in range(4):
        yield f"magic byte {byte} flipped", raw[:byte] + bytes([raw[byte] ^ 0xFF]) + raw[byte + 1 :]
    for cut in (0, 2, 4, 7, 4 + 4 * ndim, len(raw) - 1):
        yield f"cut at {cut}", raw[:cut]
    item = len(raw[4 + 4 * ndim :]) // int.from_bytes(raw[4:8], "big")  # bytes per image or label
    for count in (0, 1, 7):  # consistent files with fewer items: a header that is true, a set too small
        header = raw[:4] + count.to_bytes(4, "big") + raw[8 : 4 + 4 * ndim]
        yield f"{count} items", header + raw[4 + 4 * ndim :][: count * item]
    if ndim == 1:
        yield "label 255", raw[:-1] + b"\xff"


def exits_2_with_one_line(run: Callable[[], int], capsys, out: Path) -> str | None:
    """None when the command behaved; else what went wrong, for the failure list."""
    try:
        code = run()
    except Exception as error:  # noqa: BLE001 - a traceback is exactly what is being hunted
        return f"traceback: {type(error).__name__}: {str(error)[:120]}"
    err = capsys.readouterr().err
    written = [p.name for p in out.rglob("*") if p.is_file()] if out.exists() else []
    if code != 2 or err.count("\n") != 1 or written:
        return f"exit {code}, stderr {err[:160]!r}, wrote {written}"
    return None


def sweep(mutations: Iterator[tuple[str, Any]], check: Callable[[Any], str | None]) -> list[str]:
    """Run `check` on every mutation; what went wrong, one line per misbehaving mutation."""
    failures, count = [], 0
    for name, mutation in mutations:
        count += 1
        problem = check(mutation)
        if problem:
            failures.append(f"{name}: {problem}")
    assert count > 100, f"the sweep should be large; it made {count} mutations"
    return failures


def report(failures: list[str]) -> str:
    return f"{len(failures)} mutations misbehaved, e.g.:\n" + "\n".join(failures[:15])


@pytest.mark.timeout(300)
def test_every_space_file_mutation_exits_2_with_one_line(tmp_path, capsys):
    space, out = tmp_path / "space.toml", tmp_path / "out"

    def check(payload: bytes) -> str | None:
        space.write_bytes(payload)
        shutil.rmtree(out, ignore_errors=True)
        argv = ["--space", str(space), "--out", str(out), "--data-dir", str(tmp_path / "no-data")]
        return exits_2_with_one_line(lambda: search.main(argv), capsys, out)

    failures = sweep(space_mutations(), check)
    assert not failures, report(failures)


@pytest.mark.timeout(300)
def test_every_best_json_mutation_exits_2_with_one_line(tmp_path, tiny_dir, capsys):
    document = json.loads(best_json(tmp_path, tiny_dir).read_text())
    best, out = tmp_path / "mutated.json", tmp_path / "out"

    def check(payload: bytes) -> str | None:
        best.write_bytes(payload)
        shutil.rmtree(out, ignore_errors=True)
        argv = [str(best), "--out", str(out), "--data-dir", str(tmp_path / "no-data")]
        return exits_2_with_one_line(lambda: retrain.main(argv), capsys, out)

    failures = sweep(best_mutations(document), check)
    assert not failures, report(failures)


@pytest.mark.timeout(300)
def test_every_idx_header_mutation_exits_2_with_one_line(tmp_path, tiny_dir, capsys):
    best = best_json(tmp_path, tiny_dir)
    data, out = tmp_path / "data", tmp_path / "out"

    def mutations() -> Iterator[tuple[str, tuple[str, bytes]]]:
        """(file name, its bytes on disk) for each mutation of each of the four files."""
        for stem in FILE_STEMS.values():
            raw = gzip.decompress((tiny_dir / f"{stem}.gz").read_bytes())
            for name, payload in idx_mutations(raw):
                yield f"{stem} {name}", (f"{stem}.gz", gzip.compress(payload, mtime=0))
            yield f"{stem} not gzip", (f"{stem}.gz", raw[:100])
            yield f"{stem} torn gzip", (f"{stem}.gz", (tiny_dir / f"{stem}.gz").read_bytes()[:-9])

    def check(mutation: tuple[str, bytes]) -> str | None:
        file_name, payload = mutation
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(tiny_dir, data)
        (data / file_name).write_bytes(payload)
        shutil.rmtree(out, ignore_errors=True)
        # retrain reads all four files before it trains; --epochs 1 bounds a mutation that is valid.
        argv = [str(best), "--out", str(out), "--data-dir", str(data), "--epochs", "1", "--processes", "1"]
        return exits_2_with_one_line(lambda: retrain.main(argv), capsys, out)

    failures = sweep(mutations(), check)
    assert not failures, report(failures)


ARGPARSE_ERRORS = [
    (search, ["--bogus"], "--bogus"),
    (search, ["--trials", "many"], "'many'"),
    (bench, ["--trials", "many"], "'many'"),
    (retrain, ["best.json", "--epochs", "many"], "'many'"),
    (retrain, ["best.json", "--train-on", "everything"], "'everything'"),
    (rank, ["best.json", "--seeds", "many"], "'many'"),
    (rank, ["best.json", "--top", "2", "--retrains", "5"], "not allowed with"),
    (show, [], "required: best"),
]


@pytest.mark.parametrize(
    ("command", "argv", "named"), ARGPARSE_ERRORS, ids=lambda x: " ".join(x) if isinstance(x, list) else None
)
def test_argparse_errors_are_one_line_naming_the_problem_and_help(command, argv, named, capsys):
    """argparse's own errors end as every other bad input does: one line and exit 2, not a usage screen."""
    assert command.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert named in err and f"see python -m {command.__name__} --help" in err
