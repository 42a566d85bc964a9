"""Errors raised for bad user input, caught by the CLI and printed as one line."""

import functools
import sys
from collections.abc import Callable


class DefectfillError(Exception):
    """Base class: a problem with the user's input, reported before heavy work starts."""


class DataError(DefectfillError):
    """A reference-data file is missing or invalid; the message names the file."""


class ModelError(DefectfillError):
    """A model folder or hub id cannot be used; the message names it."""


class ConfigError(DefectfillError):
    """A config file or value is invalid; the message names the key or file."""


def one_line_errors(entry_point: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a command's entry point: a DefectfillError becomes one ``error:`` line on stderr and exit code 2."""

    @functools.wraps(entry_point)
    def run(*args, **kwargs) -> int:
        try:
            return entry_point(*args, **kwargs)
        except DefectfillError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run
