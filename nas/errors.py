"""The one error type a user sees: a problem with their input, named together with its fix."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""


def read_user_text(path: Path, what: str, fix: str) -> str:
    """A text file the user named, or one UserError that says what is wrong with it and `fix`."""
    try:
        return path.read_text()
    except OSError as error:
        raise UserError(f"{path}: cannot read {what} ({error.strerror}); {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: {what} is not UTF-8 text; {fix}") from None


EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose bad input is one UserError like any other, not a usage screen."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see python -m {self.prog} --help")


def cli(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's main so a UserError becomes one line on stderr and exit code 2."""

    @wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE

    return wrapper
