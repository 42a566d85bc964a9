"""Lock files that let several benchmark processes share one output folder, and the sweep of what
dead processes left behind.

Work is claimed per unit with a lock file (``pid@host`` and the process start time); a lock whose
holder died, even by SIGKILL, is taken over. Temp files are named ``<name>.tmp-<pid>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


HOST = socket.gethostname()
TEMP_RE = re.compile(r"\.tmp-(\d+)$")  # atomic_write_text, atomic_directory, materialize: <name>.tmp-<pid>
WAIT_POLL_S = 2.0  # how often a process that ran out of work looks at the units other processes hold


def start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, ``/proc/<pid>/stat``), or None where unknown:
    with the pid it names one process, so a reused pid is not mistaken for a lock's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (a zombie, e.g. a SIGKILLed child not yet reaped, is dead;
    with ``start``, a different process that reuses the pid is dead too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    except (OSError, OverflowError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: kill(pid, 0) is all we know
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def holder(lock: Path) -> tuple[str, str] | None:
    """``(state, who)`` of a lock: ``state`` is ``local`` (a live process here), ``remote`` (another host: its
    liveness is unknown, so it counts as alive) or ``dead``; None when there is no lock."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return ("dead", "unreadable")
    lines = text.strip().splitlines()
    try:
        pid, host = lines[0].strip().split("@", 1)
        pid = int(pid)
    except (IndexError, ValueError):  # garbage; a lock is written whole (link), but be lenient while young
        return ("local", "unknown") if not text and age < 30 else ("dead", text.strip()[:40] or "empty")
    start = next((x.split("=", 1)[1] for x in lines[1:] if x.startswith("start=")), None)
    if host != HOST:
        return ("remote", lines[0].strip())
    return ("local" if pid_alive(pid, start) else "dead", lines[0].strip())


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` with its content in one step (hard link of a written temp file): a reader never
    sees an empty lock. False when it exists."""
    start = start_ticks(os.getpid())
    text = f"{os.getpid()}@{HOST}\n" + (f"start={start}\n" if start else "")
    tmp = lock.with_name(f".{lock.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _takeover_mutex(folder: Path):
    """Serialise taking over dead holders' locks (``flock``, released by the kernel even on SIGKILL), so
    two processes never both replace the same stale lock."""
    import fcntl

    with open(folder / ".takeover", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim(lock: Path) -> bool:
    """Create ``lock`` exclusively (``pid@host`` and the process start time inside); a lock of a dead
    local process (exited, killed, a zombie, or a reused pid) is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if _create_lock(lock):
        return True
    with _takeover_mutex(lock.parent):
        held = holder(lock)
        if held is not None and held[0] != "dead":
            return False
        if held is not None:
            log(f"{lock.name}: holder {held[1]} is gone; taking the unit over")
            lock.unlink(missing_ok=True)
        return _create_lock(lock)


def remote_locks(out: Path) -> list[str]:
    """Holders on other hosts of this output folder's unit locks."""
    held = [holder(p) for p in sorted((out / "locks").glob("*.lock"))]
    return [h[1] for h in held if h and h[0] == "remote"]


def sweep(out: Path) -> list[Path]:
    """Remove what dead processes left in ``out``: ``*.tmp-<pid>`` files and folders of a pid no longer
    alive here, and the ``error.json`` of a cell that has its ``result.json`` (a run killed between the
    two). Temp files are kept while any lock belongs to another host (its pids cannot be checked)."""
    removed = []
    if not out.is_dir():
        return removed
    if not remote_locks(out):
        for folder, dirs, files in os.walk(out):
            for name in [*files, *dirs]:
                m = TEMP_RE.search(name)
                if m is None or pid_alive(int(m.group(1))):
                    continue
                path = Path(folder) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    dirs.remove(name) if name in dirs else None
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    for result in (out / "cells").glob("*/result.json"):
        error = result.with_name("error.json")
        if error.exists():
            error.unlink(missing_ok=True)
            removed.append(error)
    return removed


def release(lock: Path) -> None:
    """Remove our own lock (never one another process has taken over)."""
    try:
        first = lock.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return
    if first == f"{os.getpid()}@{HOST}":
        lock.unlink(missing_ok=True)
