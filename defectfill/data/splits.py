"""Splits of a reference folder by source image: the one place that reads ``manifest.csv`` for the
benchmark and decides which image trains, validates or evaluates.

Every split is by source id (an image and every crop of it land on one side), seeded, and
stratified: defect images by defect type (and fabric for cross-validation folds), good images
as their own groups. The permutation of a group depends only on ``(seed, group name)``, so adding
a group never reshuffles another.
"""

from __future__ import annotations

import csv
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from defectfill.errors import DataError

GOOD = "good"


def _group_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def split_by_source(groups: dict[str, Sequence[str]], val_fraction: float, seed: int) -> set[str]:
    """Ids that go to ``val``: per group, ``round(val_fraction * n)`` ids drawn with a seeded permutation.

    The permutation of a group depends only on ``(seed, group name)``. With ``val_fraction < 1`` a
    group keeps at least one id in train (a single-id group stays in train). ``val_fraction == 1``
    sends everything to val. If no group gives an id to val although ``val_fraction > 0`` and there
    are at least two ids, one id of the largest group moves to val.
    """
    if not 0 < val_fraction <= 1:
        raise ValueError(f"val_fraction must be in (0, 1], got {val_fraction}")
    val: set[str] = set()
    for name in sorted(groups):
        ids = sorted(groups[name])
        k = len(ids) if val_fraction == 1 else min(math.floor(val_fraction * len(ids) + 0.5), len(ids) - 1)
        val.update(ids[i] for i in _group_rng(seed, name).permutation(len(ids))[:max(k, 0)])
    total = sum(len(v) for v in groups.values())
    if not val and total >= 2:
        name = max(sorted(groups), key=lambda g: len(groups[g]))
        ids = sorted(groups[name])
        val.add(ids[int(_group_rng(seed, name).permutation(len(ids))[0])])
    return val


def stratified_folds(strata: dict[str, str], folds: int, seed: int) -> dict[str, int]:
    """id → fold in ``0..folds-1``: every id in exactly one fold, each stratum spread evenly.

    Strata are visited in sorted order; inside one, ids are permuted with ``(seed, stratum)`` and
    dealt round-robin, continuing where the previous stratum stopped, so fold sizes differ by at
    most one and a stratum of n ids puts floor(n/K) or ceil(n/K) of them in every fold.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    by: dict[str, list[str]] = {}
    for i, s in strata.items():
        by.setdefault(s, []).append(i)
    out, offset = {}, 0
    for name in sorted(by):
        ids = sorted(by[name])
        for j, k in enumerate(_group_rng(seed, name).permutation(len(ids))):
            out[ids[k]] = (offset + j) % folds
        offset += len(ids)
    return out


def few_shot_sample(types: dict[str, str], per_type: int, seed: int) -> set[str]:
    """``per_type`` ids of every defect type (all of a type with fewer), drawn with ``(seed, type)``."""
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    by: dict[str, list[str]] = {}
    for i, t in types.items():
        by.setdefault(t, []).append(i)
    picked = set()
    for name in sorted(by):
        ids = sorted(by[name])
        picked.update(ids[k] for k in _group_rng(seed, name).permutation(len(ids))[:per_type])
    return picked


# ----------------------------------------------------------------------------- the reference folder


def manifest_column(root: str | os.PathLike, column: str, default: str | None = None) -> dict[str, str]:
    """id → ``column`` of ``root/manifest.csv`` (rows that fill it; ``default`` for the rest when given);
    empty without a manifest."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("id")]
    if default is None:
        return {r["id"]: r[column] for r in rows if r.get(column)}
    return {r["id"]: r.get(column) or default for r in rows}


def defect_types(root: str | os.PathLike) -> dict[str, str]:
    """defect image id (``images/``) → defect type (manifest, else "defect")."""
    root = Path(root)
    types = manifest_column(root, "defect_type", default="defect")
    return {p.stem: types.get(p.stem, "defect") for p in sorted((root / "images").iterdir()) if p.is_file()}


def select_ids(root: str | os.PathLike, max_images: int | None = None) -> tuple[list[str], list[str]]:
    """(defect ids, good ids) of a reference folder, sorted; the first ``max_images`` of each."""
    root = Path(root)
    if not (root / "images").is_dir():
        raise DataError(f"{root}: not a reference data folder (no images/)")
    defect = sorted(p.stem for p in (root / "images").iterdir() if p.is_file())
    good = sorted(p.stem for p in (root / "good").iterdir() if p.is_file()) if (root / "good").is_dir() else []
    if max_images:
        defect, good = defect[:max_images], good[:max_images]
    return defect, good


def split_ids(defect: list[str], good: list[str], types: dict[str, str], fraction: float, seed: int) -> set[str]:
    """Held-out source ids, stratified by defect type (good images are one more group); a type
    with one image stays on the training side (:func:`split_by_source`)."""
    groups: dict[str, list[str]] = {}
    for i in defect:
        groups.setdefault(f"type:{types.get(i, 'defect')}", []).append(i)
    if good:
        groups[GOOD] = list(good)
    return split_by_source(groups, fraction, seed)


def held_out_split(root: str | os.PathLike, fraction: float, seed: int) -> set[str]:
    """The ids the single held-out split (``eval_fraction``, ``eval_split_seed``) keeps out of ``root``:
    code that trains outside the benchmark grid (a base model) keeps them out too."""
    defect, good = select_ids(root)
    return split_ids(defect, good, defect_types(root), fraction, seed)


def cv_folds(defect: list[str], good: list[str], types: dict[str, str], fabrics: dict[str, str],
             folds: int, seed: int) -> dict[str, int]:
    """id → evaluation fold for cross-validation by source, stratified by (defect type, fabric) for
    defect images and by fabric for good images."""
    strata = {i: f"type:{types.get(i, 'defect')}|{fabrics.get(i, '')}" for i in defect}
    strata.update({g: f"{GOOD}|{fabrics.get(g, '')}" for g in good})
    return stratified_folds(strata, folds, seed)
