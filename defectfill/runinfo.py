"""Atomic file output and the run record (resolved config, seed, package versions)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

_PACKAGES = ("defectfill", "torch", "torchvision", "diffusers", "transformers", "accelerate", "peft",
             "safetensors", "numpy", "pillow", "ultralytics")


def package_versions() -> dict[str, str | None]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to `<path>.tmp-<pid>` then rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG via `<path>.tmp-<pid>` + rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary sibling folder; on success it replaces `path` by renames (an existing `path` is
    moved aside first and restored if the final rename fails). On any failure the temporary folder goes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_run_info(directory: str | os.PathLike, config: dict, seed: int, **extra) -> Path:
    """`run_info.json` beside a run's outputs: resolved config, seed, versions, time."""
    info = {"seed": seed, "config": config, "versions": package_versions(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    return atomic_write_text(Path(directory) / "run_info.json", json.dumps(info, indent=2, default=str))
