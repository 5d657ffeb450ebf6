"""The one error type a user sees: a problem with their input, named together with its fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""


EXIT_USAGE = 2


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
