"""`UserError`: a problem the user can fix (missing data, bad file, bad option).

The CLI prints its message alone, without a traceback, and exits with status 2. Raise it with a
message that says what is wrong and how to fix it. It is a ValueError, so code that validates
arguments with it reads as usual.

`CommandParser` and `exit_on_user_error` give the commands beside LightningCLI's (tune, runs, cv, export)
the same one-line errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    pass


def found_behind(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `error`'s chain: itself, then what it was raised from or
    while handling (libraries wrap the error that says what went wrong in one that does not)."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, kinds):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None


class CommandParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, a missing or malformed value) are a UserError."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} ({self.prog} --help lists the options)")


def exit_on_user_error(command: Callable[[], T]) -> T:
    """Run a command; a UserError ends it with its message as one `error:` line and exit status 2."""
    try:
        return command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
