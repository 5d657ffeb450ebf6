"""Result files: written atomically, and stamped with what produced them."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nas.errors import UserError


def write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            tmp.write(payload)
        os.chmod(tmp.name, 0o644)  # a temporary file is private; a result is not
        os.replace(tmp.name, path)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}); choose a writable --out") from None


def check_writable(directory: Path) -> None:
    """Fail before hours of work, not after, when results could not be saved."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {directory} ({error.strerror}); choose a writable --out") from None


def write_text(path: Path, text: str) -> None:
    """Atomically write text."""
    write_bytes(path, text.encode())


def write_json(path: Path, document: Any) -> None:
    """Atomically write indented JSON."""
    write_text(path, json.dumps(document, indent=2) + "\n")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape a result."""
    found = {"python": platform.python_version()}
    for package in ("nas", "torch", "torchvision", "optuna", "fvcore"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def command_line() -> str:
    """The running command as one would type it, for the records: nas.rank's retrains name nas.rank, not nas.retrain."""
    program = Path(sys.argv[0])
    head = f"python -m nas.{program.stem}" if program.suffix == ".py" else program.name  # -m nas.X, or a script
    return " ".join([head, shlex.join(sys.argv[1:])]).rstrip()
