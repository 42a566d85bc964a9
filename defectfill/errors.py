"""Errors raised for bad user input, caught by the CLI and printed as one line."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class DefectfillError(Exception):
    """Base class: a problem with the user's input, reported before heavy work starts."""


class DataError(DefectfillError):
    """A reference-data file is missing or invalid; the message names the file."""


class ModelError(DefectfillError):
    """A model folder or hub id cannot be used; the message names it."""


class ConfigError(DefectfillError):
    """A config file or value is invalid; the message names the key or file."""


class GenerationError(DefectfillError):
    """A generation run accepted none of the samples it was asked for; the message gives the reasons."""


class OutputError(DefectfillError):
    """An output path cannot be written (exists as a file, read-only, disk full); the message names it."""


def check_writable(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise OutputError unless ``path`` is (or can be made as) a writable folder.

    Creates nothing that is not already there: walks up to the nearest existing ancestor and
    probes it with a temporary file, which is removed at once.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is an existing file; choose another output folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{path}: cannot create the {what} ({probe} is a file); choose another output folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".defectfill-write-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the {what} ({_reason(exc)} in {probe}); "
                          f"fix its permissions or choose another output folder") from exc
    return path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return " ".join(str(exc).split()) or type(exc).__name__


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                  errno.ENOTDIR, errno.EISDIR, errno.EFBIG}


@contextlib.contextmanager
def output_errors(path: str | os.PathLike, resume_hint: str = "rerun the same command to resume"):
    """Turn an OSError while writing under ``path`` (disk full, read-only, a file in the way) into one
    OutputError line naming the path and what to do. Writes are atomic (temp name, then rename), so
    what is already complete stays complete."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        where = exc.filename or path
        hint = "free disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
            "fix the path or its permissions"
        raise OutputError(f"{where}: cannot write ({_reason(exc)}); {hint}, then {resume_hint}") from exc
    except Exception as exc:  # safetensors raises its own error type for failed writes
        if type(exc).__name__ != "SafetensorError":
            raise
        raise OutputError(f"{path}: cannot write weights ({_reason(exc)}); free disk space or fix permissions, "
                          f"then {resume_hint}") from exc


def one_line_errors(entry_point: Callable[..., int | None]) -> Callable[..., int]:
    """Decorate a command's entry point: a DefectfillError (or an OSError of writing: disk full, read-only,
    a file in the way) becomes one ``error:`` line on stderr and exit code 2."""

    @functools.wraps(entry_point)
    def run(*args, **kwargs) -> int:
        try:
            return entry_point(*args, **kwargs)
        except DefectfillError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a write the command did not wrap: still one line naming the path
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            print(f"error: {exc.filename or 'output'}: cannot write ({_reason(exc)}); fix the path, its "
                  f"permissions or free space, then rerun to resume", file=sys.stderr)
            return 2

    return run
