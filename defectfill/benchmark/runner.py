"""Benchmark runner: which generator's synthetic defects help a downstream model, and by how much.

Grid: tasks (``segmenter``, ``rtdetr``) x generators x synthetic counts x seeds, plus two optional
settings for the open questions: ``label_noise`` (RT-DETR trained on boxes where long thin
components are split, ``split_long``) and ``leave_out`` (one defect type removed from the
generators' and models' training data; its recall is reported).

Protocol per seed ``s``:

1. Evaluation images: ``eval_data`` (a separate folder, used only for final evaluation) or a
   fixed held-out fraction of ``data_dir`` (split by source with ``eval_split_seed``, the same for
   every seed so comparisons are paired). Copied to ``work/eval_data``.
2. The rest (the pool) is split by source into train/val with seed ``s``. Val never steers
   training: it picks the segmenter's F1 threshold and is RT-DETR's (final-epoch) val split.
3. Generators are fitted on the train part only (``work/s<seed>/<setting>/train``) in a child
   process (its time and peak memory are recorded), generate ``max(synthetic_counts)`` samples onto
   the train part's ``good/`` images with auto masks from the train part; a cell with count ``n``
   uses the first ``n`` samples. The same seed gives every generator the same clean images and masks.
4. Every cell of a task gets the same budget: the segmenter ``segmenter.steps`` optimiser steps,
   RT-DETR about ``detector.steps`` batches (whole epochs, see ``worker.detector_job``).

Cells are written atomically (``cells/<cell>/result.json``) and skipped when present; a failing
cell writes ``error.json`` instead and is retried on the next run. Work is claimed per unit
(seed, setting, generator) with lock files, so several ``defectfill benchmark`` processes on the
same output folder share the grid (e.g. one per CPU core with ``OMP_NUM_THREADS=1``). A process
that has run what it could waits for the units other local processes hold; a unit whose holder
died (even by SIGKILL) is taken over, and temp files dead processes left are removed.

Everything is checked before the first cell: the config, every image and mask of ``data_dir`` and
``eval_data`` (fully decoded), each generator's ``check_init_args`` (e.g. DefectFill's base model
configs, no weights) and the output folder; a problem is one ``error:`` line and exit code 2, with nothing written. Exit code 1: the
run finished but some planned cells failed (listed, one line each); 0: every planned cell has its
``result.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from defectfill.benchmark.worker import STOP_ERRNOS
from defectfill.config import load_config
from defectfill.errors import ConfigError, DataError, OutputError, check_writable, one_line_errors, output_errors
from defectfill.runinfo import atomic_write_text, package_versions

REAL_ONLY = "real_only"
NEW_FABRIC = "new_"  # setting prefix of the new-fabric protocol: new_<fabric type>
TASKS = ("segmenter", "rtdetr", "openset")
OPENSET = "openset"  # DFC open-set classification: only in the leave_out setting (the left-out type is the unknown)
MAIN = "main"
# class_path (or its short spelling kind) + init_args (or fit): the generator registry's YAML names
GENERATOR_KEYS = frozenset({"name", "class_path", "kind", "init_args", "fit", "generate", "counts"})


def _int_list(values, key: str, minimum: int | None = 1) -> list[int]:
    """``values`` as a list of integers (>= ``minimum``); ConfigError naming ``key`` otherwise."""
    values = values if isinstance(values, list) else [values]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            need = "integers" if minimum is None else ("positive integers" if minimum == 1 else f"integers >= {minimum}")
            raise ConfigError(f"{key}: must be {need}, got {values}")
    return values


@dataclass
class BenchmarkConfig:
    """A benchmark profile (YAML via ``load_config``)."""

    data_dir: str = "../shared/data/aitex"
    eval_data: str | None = None  # separate folder, ONLY for final evaluation; None: hold out from data_dir
    eval_fraction: float = 0.3  # held-out fraction of sources when eval_data is None
    eval_split_seed: int = 1234  # the held-out split is the same for every seed
    val_fraction: float = 0.25  # of the pool: segmenter threshold and RT-DETR's val split
    max_images: int | None = None  # keep the first N defect and first N good images (by id) of data_dir
    output_dir: str = "runs/benchmark"
    tasks: list = field(default_factory=lambda: list(TASKS))
    generators: list = field(default_factory=lambda: [{"name": REAL_ONLY, "class_path": REAL_ONLY}])
    synthetic_counts: list = field(default_factory=lambda: [4])  # a generator's own `counts` overrides it
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    segmenter: dict = field(default_factory=dict)  # SegmenterConfig overrides, the same for every cell
    detector: dict = field(default_factory=dict)  # DetectorConfig overrides + steps (+ eval_good_tiles_per_image)
    generate: dict = field(default_factory=dict)  # GenerateConfig overrides for every generator
    metrics: dict = field(default_factory=dict)  # generation_metrics keywords (crop, features, ...)
    boundary: dict = field(default_factory=dict)  # boundary_realism keywords (crop, per_image)
    openset: dict = field(default_factory=dict)  # DFCConfig overrides (the open-set task's classifier)
    label_noise: dict | None = None  # {split_long: 4.0, generators: [real_only, ...]} (RT-DETR only)
    leave_out: dict | None = None  # {defect_type: nep, generators: [...], tasks: [...]}
    # new-fabric protocol: {targets: [fabric_02, ...], generators: [...], tasks: [...]} (see NEW_FABRIC)
    new_fabric: dict | None = None
    gallery_rows: int = 6
    device: str = "cpu"

    def validate(self) -> None:
        _int_list(self.seeds, "seeds", minimum=None)
        if len(self.seeds) < 3:
            raise ConfigError(f"seeds: need at least 3 seeds, got {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: repeated seed in {self.seeds}")
        _int_list(self.synthetic_counts, "synthetic_counts")
        if not self.synthetic_counts:
            raise ConfigError("synthetic_counts: need at least one count")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"tasks: unknown {bad} (choose from {', '.join(TASKS)})")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1 (or null for all), got {self.max_images}")
        if not self.generators:
            raise ConfigError("generators: need at least one generator")
        names = set()
        for g in self.generators:
            if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not g["name"]:
                raise ConfigError(f"generators: each entry needs a name, got {g!r}")
            unknown = sorted(set(g) - GENERATOR_KEYS)
            if unknown:
                raise ConfigError(f"generator {g['name']!r}: unknown key(s) {', '.join(map(str, unknown))} "
                                  f"(known: {', '.join(sorted(GENERATOR_KEYS))})")
            normalise_spec(g)
            if g["name"] in names:
                raise ConfigError(f"generator name {g['name']!r} repeated")
            if "counts" in g:
                counts = g["counts"] if isinstance(g["counts"], list) else [g["counts"]]
                if not counts:
                    raise ConfigError(f"generator {g['name']!r}: counts must be positive integers, got {g['counts']}")
                _int_list(counts, f"generator {g['name']!r}: counts")
            for key in ("init_args", "generate"):
                if g.get(key) is not None and not isinstance(g[key], dict):
                    raise ConfigError(f"generator {g['name']!r}: {key} must be a mapping, got {g[key]!r}")
            names.add(g["name"])
        if REAL_ONLY not in names:
            self.generators = [{"name": REAL_ONLY, "class_path": REAL_ONLY, "init_args": {}}, *self.generators]
            names.add(REAL_ONLY)
        if not 0 < self.val_fraction < 1 or not 0 < self.eval_fraction < 1:
            raise ConfigError("val_fraction and eval_fraction must be in (0, 1)")
        if "steps" not in self.detector:
            self.detector = {"steps": 100, **self.detector}
        for key, opt in (("label_noise", self.label_noise), ("leave_out", self.leave_out)):
            if opt is None:
                continue
            unknown = set(opt.get("generators", [])) - names
            if unknown:
                raise ConfigError(f"{key}.generators: {sorted(unknown)} are not in generators")
        if self.label_noise is not None and float(self.label_noise.get("split_long", 0)) < 1:
            raise ConfigError("label_noise.split_long must be an aspect ratio >= 1")
        if self.leave_out is not None and not self.leave_out.get("defect_type"):
            raise ConfigError("leave_out.defect_type is required")
        if OPENSET in self.tasks and (self.leave_out is None or OPENSET not in self.leave_out.get("tasks", self.tasks)):
            raise ConfigError("tasks: openset needs leave_out with openset in its tasks (the left-out defect type "
                              "is the unknown class)")
        if self.new_fabric is not None:
            targets = self.new_fabric.get("targets")
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ConfigError(f"new_fabric.targets: need a list of fabric types, got {targets!r}")
            unknown = set(self.new_fabric.get("generators", [])) - names
            if unknown:
                raise ConfigError(f"new_fabric.generators: {sorted(unknown)} are not in generators")
            bad_tasks = set(self.new_fabric.get("tasks", [])) - set(self.tasks)
            if bad_tasks:
                raise ConfigError(f"new_fabric.tasks: {sorted(bad_tasks)} are not in tasks")


# ----------------------------------------------------------------------------- plan


@dataclass
class Cell:
    task: str
    setting: str  # "main", "split_long<k>" or "without_<type>"
    generator: str
    count: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.setting}-{self.generator}-n{self.count}-s{self.seed}"


@dataclass
class Unit:
    """One generator fitted once on one seed's training data (``data``: main or without_<type>)."""

    seed: int
    data: str
    spec: dict
    cells: list

    @property
    def name(self) -> str:
        return f"s{self.seed}-{self.data}-{self.spec['name']}"


def normalise_spec(g: dict) -> dict:
    """A generator entry in its one form: ``class_path`` (``kind`` is its short spelling; default: the
    name) and ``init_args`` (``fit`` is accepted for it). The class must import (``real_only``: no generator)."""
    from defectfill.generators import import_class

    for new, old in (("class_path", "kind"), ("init_args", "fit")):
        if new in g and old in g:
            raise ConfigError(f"generator {g['name']!r}: give {new} or {old}, not both")
        if old in g:
            g[new] = g.pop(old)
    g.setdefault("class_path", g["name"])
    if g.get("init_args") is None:
        g["init_args"] = {}
    if not isinstance(g["class_path"], str) or not g["class_path"]:
        raise ConfigError(f"generator {g['name']!r}: class_path must be a string, got {g['class_path']!r}")
    if g["class_path"] != REAL_ONLY:
        try:
            import_class(g["class_path"])
        except ConfigError as exc:
            raise ConfigError(f"generator {g['name']!r}: {exc}") from exc
    return g


def _kind(spec: dict) -> str:
    """The generator's class path (or ``real_only``)."""
    return spec.get("class_path", spec.get("kind", spec["name"]))


def _counts(spec: dict, counts) -> list[int]:
    """A generator's synthetic counts: its own ``counts`` or the grid's ``synthetic_counts``, sorted."""
    return sorted({int(c) for c in spec.get("counts", counts)})


def plan(cfg: BenchmarkConfig) -> list[Unit]:
    """Every unit and its cells, in run order (seed-major)."""
    counts = sorted({int(c) for c in cfg.synthetic_counts})
    units = []
    for seed in cfg.seeds:
        for spec in cfg.generators:
            ns = [0] if _kind(spec) == REAL_ONLY else _counts(spec, counts)
            cells = [Cell(t, MAIN, spec["name"], n, seed) for t in cfg.tasks if t != OPENSET for n in ns]
            if cfg.label_noise and "rtdetr" in cfg.tasks and \
                    spec["name"] in cfg.label_noise.get("generators", [spec["name"]]):
                tag = f"split_long{cfg.label_noise['split_long']:g}"
                cells += [Cell("rtdetr", tag, spec["name"], n, seed) for n in ns]
            units.append(Unit(seed, MAIN, spec, cells))
        if cfg.leave_out:
            data = f"without_{cfg.leave_out['defect_type']}"
            tasks = [t for t in cfg.leave_out.get("tasks", cfg.tasks) if t in cfg.tasks]
            for spec in cfg.generators:
                if spec["name"] in cfg.leave_out.get("generators", [spec["name"]]):
                    ns = [0] if _kind(spec) == REAL_ONLY else _counts(spec, counts)
                    cells = [Cell(t, data, spec["name"], n, seed) for t in tasks for n in ns]
                    units.append(Unit(seed, data, spec, cells))
        if cfg.new_fabric:
            tasks = [t for t in cfg.new_fabric.get("tasks", cfg.tasks) if t in cfg.tasks and t != OPENSET]
            for target in cfg.new_fabric["targets"]:
                data = f"{NEW_FABRIC}{target}"
                for spec in cfg.generators:
                    if spec["name"] in cfg.new_fabric.get("generators", [spec["name"]]):
                        ns = [0] if _kind(spec) == REAL_ONLY else _counts(spec, counts)
                        units.append(Unit(seed, data, spec, [Cell(t, data, spec["name"], n, seed)
                                                             for t in tasks for n in ns]))
    return units


# ----------------------------------------------------------------------------- data


def _manifest_types(root: Path) -> dict[str, str]:
    """id → defect_type from ``manifest.csv`` (empty when there is none)."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["id"]: r.get("defect_type") or "defect" for r in csv.DictReader(f) if r.get("id")}


def _manifest_column(root: Path, column: str) -> dict[str, str]:
    """id → ``column`` of ``manifest.csv`` for the rows that fill it (empty without a manifest)."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["id"]: r[column] for r in csv.DictReader(f) if r.get("id") and r.get(column)}


def _defect_types(root: Path) -> dict[str, str]:
    """defect image id → defect type (manifest, else "defect")."""
    types = _manifest_types(root)
    return {p.stem: types.get(p.stem, "defect") for p in sorted((root / "images").iterdir()) if p.is_file()}


def _select_ids(root: Path, max_images: int | None) -> tuple[list[str], list[str]]:
    if not (root / "images").is_dir():
        raise DataError(f"{root}: not a reference data folder (no images/)")
    defect = sorted(p.stem for p in (root / "images").iterdir() if p.is_file())
    good = sorted(p.stem for p in (root / "good").iterdir() if p.is_file()) if (root / "good").is_dir() else []
    if max_images:
        defect, good = defect[:max_images], good[:max_images]
    return defect, good


def split_ids(defect: list[str], good: list[str], types: dict[str, str], fraction: float, seed: int) -> set[str]:
    """Held-out source ids, stratified by defect type (good images are one more group); a type
    with one image stays on the training side (``detect.dataset.split_by_source``)."""
    from defectfill.detect.dataset import split_by_source

    groups: dict[str, list[str]] = {}
    for i in defect:
        groups.setdefault(f"type:{types.get(i, 'defect')}", []).append(i)
    if good:
        groups["good"] = list(good)
    return split_by_source(groups, fraction, seed)


def held_out_split(root: str | os.PathLike, fraction: float, seed: int) -> set[str]:
    """The ids the benchmark holds out of ``root`` for evaluation (``eval_fraction``, ``eval_split_seed``)
    when no ``eval_data`` is given: code that trains outside the grid (a base model) keeps them out too."""
    defect, good = _select_ids(Path(root), None)
    return split_ids(defect, good, _defect_types(Path(root)), fraction, seed)


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def materialize(src: Path, ids: set[str], dest: Path) -> Path:
    """Copy (hard-link when possible) images/masks/good of source ids ``ids`` and their manifest rows
    to ``dest``; atomic (built beside it, then renamed), so concurrent runners never see half a folder."""
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "masks", "good"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        if (src / sub).is_dir():
            for p in (src / sub).iterdir():
                if p.is_file() and p.stem in ids:
                    _link_or_copy(p, tmp / sub / p.name)
    manifest = src / "manifest.csv"
    if manifest.exists():
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("id") in ids]
            fields = reader.fieldnames
        with (tmp / "manifest.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    (tmp / ".complete").write_text("ok\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, dest)
    except OSError:  # another runner finished it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / ".complete").exists():
            raise
    return dest


class Context:
    """Everything a unit needs that is shared across units: splits, evaluation data, eval tiles."""

    def __init__(self, cfg: BenchmarkConfig, out: Path):
        from defectfill.downstream.segmenter import SegmenterConfig

        self.cfg, self.out = cfg, out
        self.data = Path(cfg.data_dir)
        self.seg = load_config(SegmenterConfig, **cfg.segmenter)
        defect, good = _select_ids(self.data, cfg.max_images)
        self.types = {k: v for k, v in _defect_types(self.data).items() if k in set(defect)}
        self._held: set[str] | None = None
        if cfg.eval_data:
            self._eval_dir: Path | None = Path(cfg.eval_data)
            _select_ids(self._eval_dir, None)
            self.pool_defect, self.pool_good = defect, good
            self.eval_source = {"kind": "eval_data", "path": str(cfg.eval_data)}
            self.eval_types = _defect_types(self._eval_dir)
            eval_good = sorted(p.stem for p in (self._eval_dir / "good").glob("*") if p.is_file())
        else:  # the held-out folder is written when a cell first needs it (nothing is written here)
            held = self._split(defect, good, cfg.eval_fraction, cfg.eval_split_seed)
            self.pool_defect = [i for i in defect if i not in held]
            self.pool_good = [i for i in good if i not in held]
            self._held, self._eval_dir = held, None
            self.eval_source = {"kind": "held_out_split", "fraction": cfg.eval_fraction, "seed": cfg.eval_split_seed}
            self.eval_types = {i: t for i, t in self.types.items() if i in held}
            eval_good = sorted(g for g in good if g in held)
        self.eval_source["eval_ids"] = sorted(self.eval_types) + eval_good
        self.left_out = cfg.leave_out["defect_type"] if cfg.leave_out else None
        if self.left_out:
            if self.left_out not in set(self.types.values()):
                raise DataError(f"{self.data}: leave_out.defect_type {self.left_out!r} has no training images "
                                f"(types: {', '.join(sorted(set(self.types.values())))})")
            if self.left_out not in set(self.eval_types.values()):
                where = cfg.eval_data or f"{self.data} (its held-out evaluation part, eval_fraction {cfg.eval_fraction})"
                raise DataError(f"{where}: no evaluation image of leave_out.defect_type {self.left_out!r}")
        self.all_defect, self.all_good = defect, good
        self.fabrics = _manifest_column(self.data, "fabric_type")
        self._new_eval: dict[str, tuple[Path, list[str]]] = {}
        for target in (cfg.new_fabric or {}).get("targets", []):
            src = Path(cfg.eval_data) if cfg.eval_data else self.data
            src_fabrics = _manifest_column(src, "fabric_type")
            ids = [i for i in _defect_types(src) if src_fabrics.get(i) == target]
            if not ids:
                raise DataError(f"{src / 'manifest.csv'}: no defect image of new_fabric target {target!r} "
                                f"(fabric_type column; found {', '.join(sorted(set(src_fabrics.values()))) or 'none'})")
            if not any(self.fabrics.get(g) == target for g in good):
                raise DataError(f"{self.data}: no clean good/ image of new_fabric target {target!r} to synthesise onto")
            self._new_eval[target] = (src, ids)
        self._eval_tiles: dict[str, dict] = {}
        self._eval_det: dict[str, dict[str, str]] = {}

    def _split(self, defect: list[str], good: list[str], fraction: float, seed: int) -> set[str]:
        return split_ids(defect, good, self.types, fraction, seed)

    @property
    def eval_dir(self) -> Path:
        """The main evaluation folder: ``eval_data``, or the held-out part of ``data_dir`` (written on first use)."""
        if self._eval_dir is None:
            self._eval_dir = materialize(self.data, self._held, self.out / "work" / "eval_data")
        return self._eval_dir

    @staticmethod
    def target(data: str) -> str | None:
        """The target fabric of a new-fabric setting (``new_<fabric>``), else None."""
        return data[len(NEW_FABRIC):] if data.startswith(NEW_FABRIC) else None

    def split(self, seed: int, data: str) -> tuple[set[str], set[str]]:
        """(train ids, val ids) of a seed, split by source; ``without_<type>`` first drops that type's images.

        ``new_<fabric>`` (the new-fabric protocol): every image of ``data_dir`` except the target
        fabric's defect images; the target's clean images all stay on the training side (they are
        what generators synthesise onto), the rest is split as usual.
        """
        target = self.target(data)
        if target is not None:
            defect = [i for i in self.all_defect if self.fabrics.get(i) != target]
            others = [g for g in self.all_good if self.fabrics.get(g) != target]
            clean = {g for g in self.all_good if self.fabrics.get(g) == target}
            val = self._split(defect, others, self.cfg.val_fraction, seed)
            ids = set(defect) | set(others) | clean
            return ids - val, ids & val
        defect = self.pool_defect
        if data != MAIN:
            defect = [i for i in defect if self.types.get(i) != self.left_out]
        val = self._split(defect, self.pool_good, self.cfg.val_fraction, seed)
        ids = set(defect) | set(self.pool_good)
        return ids - val, ids & val

    def target_clean(self, data: str, train_ids: set[str]) -> set[str]:
        """The target fabric's clean image ids on the training side (new-fabric settings only)."""
        target = self.target(data)
        return {g for g in self.all_good if self.fabrics.get(g) == target and g in train_ids}

    def eval_dir_for(self, data: str) -> Path:
        """The evaluation folder of a setting: the target fabric's defect images for ``new_<fabric>``
        (from ``eval_data`` when given, else all of ``data_dir``'s, none of which trains), else the
        main evaluation folder."""
        target = self.target(data)
        if target is None:
            return self.eval_dir
        src, ids = self._new_eval[target]
        return materialize(src, set(ids), self.out / "work" / f"eval_{data}")

    def eval_source_for(self, data: str) -> dict:
        target = self.target(data)
        if target is None:
            return self.eval_source
        src, ids = self._new_eval[target]
        return {"kind": "new_fabric", "target": target, "path": str(src), "eval_ids": sorted(ids)}

    def eval_tiles(self, data: str = MAIN) -> dict:
        """name → (EvalTiles, per-image defect type) of a setting: ``all`` and, with ``leave_out``, the
        left-out type only."""
        from defectfill.downstream.segmenter import eval_tiles_for
        from defectfill.downstream.tiles import images_from_reference

        key = data if self.target(data) else MAIN
        if key not in self._eval_tiles:
            eval_dir = self.eval_dir_for(key)
            types = _defect_types(eval_dir)
            images = images_from_reference(eval_dir, self.seg.in_channels)
            groups = [types.get(im.id, "good") for im in images]
            subsets = {"all": (eval_tiles_for(self.seg, images), groups)}
            if self.left_out and key == MAIN:
                keep = [im for im, g in zip(images, groups) if g == self.left_out]
                subsets[f"type_{self.left_out}"] = (eval_tiles_for(self.seg, keep), [self.left_out] * len(keep))
            self._eval_tiles[key] = subsets
        return self._eval_tiles[key]

    def eval_detection(self, data: str = MAIN) -> dict[str, str]:
        """name → data.yaml of the evaluation detection folders of a setting (all, and the left-out type only)."""
        from defectfill.detect.dataset import build_eval_dataset

        key = data if self.target(data) else MAIN
        if key not in self._eval_det:
            det = self.cfg.detector
            kw = dict(tile=det.get("tile", 256), single_class=det.get("single_class", True),
                      good_tiles_per_image=det.get("eval_good_tiles_per_image"))
            root = self.out / "work" / "eval_det"
            folders = {"all": (root / ("all" if key == MAIN else key), None)}
            if key == MAIN and self.left_out and "rtdetr" in self.cfg.leave_out.get("tasks", self.cfg.tasks):
                folders[f"type_{self.left_out}"] = (root / f"type_{self.left_out}", [self.left_out])
            found = {}
            for name, (folder, types) in folders.items():
                if not (folder / "data.yaml").is_file():
                    build_eval_dataset(self.eval_dir_for(key), folder, defect_types=types, **kw,
                                       **({"include_good": False} if types else {}))
                found[name] = str(folder / "data.yaml")
            self._eval_det[key] = found
        return self._eval_det[key]


# ----------------------------------------------------------------------------- locking


HOST = socket.gethostname()
TEMP_RE = re.compile(r"\.tmp-(\d+)$")  # atomic_write_text, atomic_directory, materialize: <name>.tmp-<pid>
WAIT_POLL_S = 2.0  # how often a process that ran out of work looks at the units other processes hold


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, ``/proc/<pid>/stat``), or None where unknown:
    with the pid it names one process, so a reused pid is not mistaken for a lock's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def _pid_alive(pid: int, start: str | None = None) -> bool:
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


def _holder(lock: Path) -> tuple[str, str] | None:
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
    return ("local" if _pid_alive(pid, start) else "dead", lines[0].strip())


def _create_lock(lock: Path) -> bool:
    """Create ``lock`` with its content in one step (hard link of a written temp file): a reader never
    sees an empty lock. False when it exists."""
    start = _start_ticks(os.getpid())
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


def _claim(lock: Path) -> bool:
    """Create ``lock`` exclusively (``pid@host`` and the process start time inside); a lock of a dead
    local process (exited, killed, a zombie, or a reused pid) is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if _create_lock(lock):
        return True
    with _takeover_mutex(lock.parent):
        held = _holder(lock)
        if held is not None and held[0] != "dead":
            return False
        if held is not None:
            _log(f"{lock.name}: holder {held[1]} is gone; taking the unit over")
            lock.unlink(missing_ok=True)
        return _create_lock(lock)


def _remote_locks(out: Path) -> list[str]:
    """Holders on other hosts of this output folder's unit locks."""
    held = [_holder(p) for p in sorted((out / "locks").glob("*.lock"))]
    return [h[1] for h in held if h and h[0] == "remote"]


def sweep(out: Path) -> list[Path]:
    """Remove what dead processes left in ``out``: ``*.tmp-<pid>`` files and folders of a pid no longer
    alive here, and the ``error.json`` of a cell that has its ``result.json`` (a run killed between the
    two). Temp files are kept while any lock belongs to another host (its pids cannot be checked)."""
    removed = []
    if not out.is_dir():
        return removed
    if not _remote_locks(out):
        for folder, dirs, files in os.walk(out):
            for name in [*files, *dirs]:
                m = TEMP_RE.search(name)
                if m is None or _pid_alive(int(m.group(1))):
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


# ----------------------------------------------------------------------------- cells


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _segmenter_cell(ctx: Context, cell: Cell, train_imgs, val_imgs, synthetic) -> dict:
    from defectfill.downstream.segmenter import SegmenterConfig, evaluate_segmenter, train_segmenter

    seg = SegmenterConfig(**{**asdict(ctx.seg), "seed": cell.seed})
    t0 = time.perf_counter()
    model, log = train_segmenter(seg, [*train_imgs, *synthetic], val_imgs)
    evaluations = {name: evaluate_segmenter(model, tiles, threshold=log.get("val_threshold"),
                                            batch_size=seg.eval_batch_size, groups=groups)
                   for name, (tiles, groups) in ctx.eval_tiles(cell.setting).items()}
    return {"metrics": evaluations["all"], "evaluations": evaluations, "steps": seg.steps,
            "config": asdict(seg), "seconds": time.perf_counter() - t0, "val_threshold": log.get("val_threshold"),
            "val": log.get("val"), "train_real_images": len(train_imgs), "val_images": len(val_imgs),
            "synthetic_used": len(synthetic), "positive_crops": log.get("positive_crops"),
            "synthetic_positive_crops": log.get("synthetic_positive_crops")}


def _openset_cell(ctx: Context, cell: Cell, pool_dir: Path, gen_dir: Path | None) -> dict:
    """DFC (defectfill.downstream.openset) trained on the pool's real defect crops (the left-out type is
    not among them) plus the first ``cell.count`` generated samples (their sidecar class), then scored
    on the evaluation images: known types vs the left-out type (open-set AUROC, fraction of the unknown
    type flagged, false-unknown rate on known types). Crops: ``crop_around_masks`` on both sides."""
    from defectfill.downstream.openset import DFCConfig, train_dfc
    from defectfill.metrics import load_dataset_crops, load_reference_crops

    dfc_cfg = load_config(DFCConfig, **{**ctx.cfg.openset, "seed": cell.seed})
    size = dfc_cfg.crop
    real = load_reference_crops(pool_dir, size)
    pool_types = _defect_types(pool_dir)
    images, labels = list(real.images), [pool_types[n] for n in real.names]
    synthetic = []
    if gen_dir is not None and cell.count:
        for cls in sorted(set(labels)):
            got = load_dataset_crops(gen_dir, size, defect_class=cls)
            synthetic += [(name, img, cls) for name, img in zip(got.names, got.images)]
        synthetic = sorted(synthetic, key=lambda t: t[0])[:cell.count]
    images += [img for _, img, _ in synthetic]
    labels += [cls for _, _, cls in synthetic]
    t0 = time.perf_counter()
    dfc = train_dfc(np.stack(images), labels, dfc_cfg)
    ev = load_reference_crops(ctx.eval_dir, size)
    ev_types = _defect_types(ctx.eval_dir)
    known = [i for i, n in enumerate(ev.names) if ev_types[n] in dfc.classes]
    novel = [i for i, n in enumerate(ev.names) if ev_types[n] == ctx.left_out]
    if not known or not novel:
        raise DataError(f"{ctx.eval_dir}: open-set evaluation needs defects of known types and of "
                        f"{ctx.left_out!r}; got {len(known)} known and {len(novel)} unknown")
    report = dfc.evaluate(ev.images[known], [ev_types[ev.names[i]] for i in known], ev.images[novel])
    metrics = {"auroc": report["auroc"], "novel_flagged": report["novel_flagged_fraction"],
               "known_false_unknown": report["known_false_unknown_rate"], "known_accuracy": report["known_accuracy"],
               "known_accuracy_open": report["known_accuracy_open"]}
    return {"metrics": metrics, "evaluations": {"all": metrics}, "openset": report, "config": asdict(dfc_cfg),
            "classes": dfc.classes, "train_real_crops": len(real), "synthetic_used": len(synthetic),
            "steps": dfc_cfg.steps, "seconds": time.perf_counter() - t0, "dfc_log": dfc.log}


def _detector_cell(ctx: Context, cell: Cell, unit_dir: Path, pool_dir: Path, val_ids: set[str],
                   gen_dir: Path | None) -> dict:
    from defectfill.benchmark.worker import run_job

    det = dict(ctx.cfg.detector)
    if cell.setting.startswith("split_long"):
        det["split_long"] = float(ctx.cfg.label_noise["split_long"])
    job = {"kind": "detector", "pool_dir": str(pool_dir), "val_ids": sorted(val_ids), "detector": det,
           "synthetic_dirs": [str(gen_dir)] if gen_dir is not None and cell.count else [],
           "limit": cell.count or None, "seed": cell.seed, "work_dir": str(unit_dir / "det" / cell.name),
           "evals": ctx.eval_detection(cell.setting)}
    result = run_job(job, unit_dir / "det" / cell.name / "job")
    return {"metrics": result["evaluations"]["all"], **result, "steps": result["iterations"]}


def _generator_run(ctx: Context, unit: Unit, unit_dir: Path, train_dir: Path, clean_dir: Path | None = None) -> dict:
    """Fit + generate in a child process (cached in ``unit_dir/generator.json``), then generation metrics."""
    from defectfill.benchmark.worker import run_job

    cached = unit_dir / "generator.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    gen_dir = unit_dir / "gen"
    shutil.rmtree(gen_dir, ignore_errors=True)
    job = {"kind": "generator", "spec": unit.spec, "train_dir": str(train_dir),
           "fit_dir": str(unit_dir / "fit"), "gen_dir": str(gen_dir), "seed": unit.seed,
           "count": max(_counts(unit.spec, ctx.cfg.synthetic_counts)),
           "clean_dir": str(clean_dir) if clean_dir else None,
           "generate": ctx.cfg.generate}
    run = run_job(job, unit_dir / "generator_job")
    side = _first_sidecar(gen_dir)
    about = json.loads(Path(side).read_text()) if side else {}
    if about.get("base_model"):  # generators built on a base model say which (DefectFill)
        run["base_model"] = {"path": about["base_model"], "note": about.get("base_model_note", "")}
    try:
        from defectfill.benchmark.gallery import generation_metrics

        t0 = time.perf_counter()
        run["generation_metrics"] = generation_metrics(gen_dir, train_dir, seed=unit.seed, **ctx.cfg.metrics)
        run["generation_metrics"]["seconds"] = time.perf_counter() - t0
    except Exception as exc:  # metrics are a report column, not a reason to lose the cell
        run["generation_metrics"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        from defectfill.benchmark.gallery import boundary_realism

        t0 = time.perf_counter()
        keys = ("features", "features_weights", "device")
        run["boundary_realism"] = boundary_realism(gen_dir, train_dir, seed=unit.seed,
                                                   **{k: v for k, v in ctx.cfg.metrics.items() if k in keys},
                                                   **ctx.cfg.boundary)
        run["boundary_realism"]["seconds"] = time.perf_counter() - t0
    except Exception as exc:
        run["boundary_realism"] = {"error": f"{type(exc).__name__}: {exc}"}
    atomic_write_text(cached, json.dumps(run, indent=2, default=str))
    return run


def _stops_the_run(exc: BaseException) -> bool:
    """A write failure of the output folder itself (disk full, read-only): every further cell would fail
    the same way, so the run stops with one line instead (finished cells stay; a rerun resumes)."""
    return isinstance(exc, OutputError) or (isinstance(exc, OSError) and exc.errno in STOP_ERRNOS)


def run_unit(ctx: Context, unit: Unit, todo: list[Cell]) -> int:
    """Fit/generate once, then run ``todo`` cells; every cell ends in result.json or error.json
    (unless the output folder cannot be written: then the error propagates)."""
    from defectfill.downstream.tiles import images_from_reference, images_from_synthetic

    seed = unit.seed
    base = ctx.out / "work" / f"s{seed}" / unit.data
    unit_dir = base / unit.spec["name"]
    gen_run, gen_dir, error = {}, None, None
    try:
        train_ids, val_ids = ctx.split(seed, unit.data)
        train_dir = materialize(ctx.data, train_ids, base / "train")
        pool_dir = materialize(ctx.data, train_ids | val_ids, base / "pool")
        if _kind(unit.spec) != REAL_ONLY:
            _log(f"{unit.name}: fit + generate")
            clean_dir = None
            if ctx.target(unit.data):  # synthesise onto the target fabric's clean images only
                clean_dir = materialize(ctx.data, ctx.target_clean(unit.data, train_ids), base / "target_clean") / "good"
            gen_run = _generator_run(ctx, unit, unit_dir, train_dir, clean_dir)
            gen_dir = Path(gen_run["generated_dir"])
    except Exception as exc:
        if _stops_the_run(exc):
            raise
        error = exc
    train_imgs = val_imgs = synthetic_all = None
    done = 0
    for cell in todo:
        cell_dir = ctx.out / "cells" / cell.name
        start = time.perf_counter()
        try:
            if error is not None:
                raise error
            if cell.task == "segmenter":
                if train_imgs is None:
                    pool = images_from_reference(pool_dir, ctx.seg.in_channels)
                    train_imgs = [im for im in pool if im.source_id in train_ids]
                    val_imgs = [im for im in pool if im.source_id in val_ids]
                    synthetic_all = images_from_synthetic(gen_dir, ctx.seg.in_channels) if gen_dir else []
                result = _segmenter_cell(ctx, cell, train_imgs, val_imgs, synthetic_all[:cell.count])
            elif cell.task == OPENSET:
                result = _openset_cell(ctx, cell, pool_dir, gen_dir)
            else:
                result = _detector_cell(ctx, cell, unit_dir, pool_dir, val_ids, gen_dir)
        except Exception as exc:
            if _stops_the_run(exc):
                raise
            tb = getattr(exc, "log_tail", "") or traceback.format_exc(limit=-6)
            atomic_write_text(cell_dir / "error.json", json.dumps(
                {**asdict(cell), "cell": cell.name, "error": f"{type(exc).__name__}: {exc}", "traceback": tb},
                indent=2))
            _log(f"{cell.name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        record = {**asdict(cell), "cell": cell.name, "unit": unit.name, "eval_source": ctx.eval_source_for(cell.setting),
                  "generator_class": _kind(unit.spec), "generator_run": gen_run,
                  "cell_seconds": time.perf_counter() - start,
                  "sidecar_example": _first_sidecar(gen_dir), **result}
        atomic_write_text(cell_dir / "result.json", json.dumps(record, indent=2, default=str))
        (cell_dir / "error.json").unlink(missing_ok=True)
        main = result["metrics"]
        score = (f"pixel AP {main['pixel_ap']:.4f}" if cell.task == "segmenter"
                 else f"open-set AUROC {main['auroc']:.3f}, unknown flagged {main['novel_flagged']:.2f}"
                 if cell.task == OPENSET else f"mAP50 {main['map50'] or 0:.4f} recall {main['recall'] or 0:.3f}")
        _log(f"{cell.name}: {score} ({time.perf_counter() - start:.0f} s)")
        done += 1
    return done


def _first_sidecar(root: Path | None) -> str | None:
    if root is None:
        return None
    sides = sorted((root / "sidecars").glob("*.json"))
    return str(sides[0]) if sides else None


GRID_KEYS = ("data_dir", "eval_data", "eval_fraction", "eval_split_seed", "val_fraction", "max_images", "segmenter",
             "detector", "generate", "metrics", "boundary", "openset", "label_noise", "leave_out", "new_fabric")


def check_grid(cfg: BenchmarkConfig, out: Path, write: bool = True) -> None:
    """Refuse to mix cells of different settings in one output folder (``grid.json`` keeps the first run's).

    Seeds, counts and generators may be added later; a generator's spec may not change. With
    ``write=False`` only the check runs (nothing is written).
    """
    grid = {"settings": {k: getattr(cfg, k) for k in GRID_KEYS},
            "generators": {g["name"]: g for g in cfg.generators}}
    grid = json.loads(json.dumps(grid, default=str))
    path = out / "grid.json"
    if not path.is_file():
        if write:
            atomic_write_text(path, json.dumps(grid, indent=2))
        return
    try:
        old = json.loads(path.read_text())
        old_settings, old_generators = old["settings"], old["generators"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid this folder was run with ({type(exc).__name__}); "
                          f"use a new output_dir, or delete {path} if its cells match this config") from exc
    changed = [k for k in GRID_KEYS if old_settings.get(k) != grid["settings"][k]]
    changed += [f"generators.{n}" for n, g in grid["generators"].items() if n in old_generators
                and old_generators[n] != g]
    if changed:
        raise ConfigError(f"{out}: holds cells run with other settings ({', '.join(changed)} differ from "
                          f"{path}); use a new output_dir or delete it")
    if write:
        old_generators.update(grid["generators"])
        atomic_write_text(path, json.dumps(old, indent=2))


# ----------------------------------------------------------------------------- checks before any cell


def _sub_config(cls, values: dict, key: str):
    """``cls`` from a sub-mapping of the benchmark config; a ConfigError names ``key``."""
    try:
        return load_config(cls, **values)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{key}: {msg[len('config: '):] if msg.startswith('config: ') else msg}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {' '.join(str(exc).split())}") from exc


def check_settings(cfg: BenchmarkConfig) -> None:
    """The sub-configs every cell uses (segmenter, detector, each generator's generation settings)."""
    from defectfill.benchmark.worker import check_generation_settings
    from defectfill.downstream.segmenter import SegmenterConfig

    _sub_config(SegmenterConfig, cfg.segmenter, "segmenter")
    if OPENSET in cfg.tasks:
        from defectfill.downstream.openset import DFCConfig

        _sub_config(DFCConfig, cfg.openset, "openset")
    if "rtdetr" in cfg.tasks:
        from defectfill.detect.rtdetr import DetectorConfig

        steps = cfg.detector.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"detector.steps: must be a positive integer, got {steps!r}")
        eval_good = cfg.detector.get("eval_good_tiles_per_image")
        if eval_good is not None and (isinstance(eval_good, bool) or not isinstance(eval_good, int) or eval_good < 0):
            raise ConfigError(f"detector.eval_good_tiles_per_image: must be an integer >= 0, got {eval_good!r}")
        det = {k: v for k, v in cfg.detector.items() if k not in ("steps", "eval_good_tiles_per_image")}
        _sub_config(DetectorConfig, {k: v for k, v in det.items() if v is not None}, "detector")
    for spec in cfg.generators:
        if _kind(spec) != REAL_ONLY:
            check_generation_settings(spec, cfg.generate)


def check_data(cfg: BenchmarkConfig) -> None:
    """Every image and mask of ``data_dir`` and ``eval_data`` decodes, masks fit their images and are
    neither empty nor full, the manifest has a row per image (``load_reference_dataset``)."""
    from defectfill.data.datasets import load_reference_dataset

    for key, root in (("data_dir", cfg.data_dir), ("eval_data", cfg.eval_data)):
        if root is None:
            continue
        root = Path(root)
        if not root.is_dir():
            state = "is not a folder" if root.exists() else "not found"
            raise DataError(f"{root}: {key} {state} (a reference folder: images/, masks/, optional good/ "
                            f"and manifest.csv)")
        load_reference_dataset(root).samples.clear()


def check_inputs(cfg: BenchmarkConfig, out: Path, units: list[Unit]) -> Context:
    """Everything the pending ``units`` need, checked before any cell: settings, data, model. Writes nothing."""
    from defectfill.generators import import_class

    check_settings(cfg)
    check_data(cfg)
    checked = set()
    for unit in units:
        spec = unit.spec
        if _kind(spec) != REAL_ONLY and spec["name"] not in checked:
            checked.add(spec["name"])
            try:
                import_class(_kind(spec)).check_init_args(spec.get("init_args"))
            except ConfigError as exc:
                raise ConfigError(f"generator {spec['name']!r}: {exc}") from exc
    return Context(cfg, out)


# ----------------------------------------------------------------------------- the run


def _result(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.name / "result.json"


def _failed_since(out: Path, cell: Cell, since: float) -> bool:
    """The cell failed during this run (its error.json is newer than ``since``): not retried again."""
    try:
        return (out / "cells" / cell.name / "error.json").stat().st_mtime >= since
    except OSError:
        return False


def _release(lock: Path) -> None:
    """Remove our own lock (never one another process has taken over)."""
    try:
        first = lock.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return
    if first == f"{os.getpid()}@{HOST}":
        lock.unlink(missing_ok=True)


def _try_unit(ctx: Context, out: Path, unit: Unit, since: float) -> int | None:
    """Run a unit's missing cells if its lock can be claimed: the number of cells run, None when another
    live process holds it."""
    def todo():
        return [c for c in unit.cells if not _result(out, c).exists() and not _failed_since(out, c, since)]

    if not todo():
        return 0
    lock = out / "locks" / f"{unit.name}.lock"
    if not _claim(lock):
        return None
    try:
        cells = todo()  # another process may have finished the unit meanwhile
        return run_unit(ctx, unit, cells) if cells else 0
    finally:
        _release(lock)


def _run_pending(ctx: Context, out: Path, units: list[Unit], since: float, wait: bool) -> tuple[int, list[str]]:
    """Run every unit this process can claim; then, with ``wait``, wait for the units live local processes
    hold (taking over those whose holder dies). Returns (cells run, units left to other processes)."""
    ran, waiting = 0, []
    for unit in units:
        n = _try_unit(ctx, out, unit, since)
        if n is None:
            waiting.append(unit)
        else:
            ran += n
    announced = False
    while waiting and wait:
        holders = [_holder(out / "locks" / f"{u.name}.lock") for u in waiting]
        if all(h is not None and h[0] == "remote" for h in holders):
            break  # another host's processes: their liveness cannot be checked from here
        if not announced:
            _log(f"waiting for {len(waiting)} unit(s) other processes hold: "
                 f"{', '.join(u.name for u in waiting[:6])}{' ...' if len(waiting) > 6 else ''}")
            announced = True
        time.sleep(WAIT_POLL_S)
        still = []
        for unit in waiting:
            n = _try_unit(ctx, out, unit, since)
            if n is None:
                still.append(unit)
            else:
                ran += n
        waiting = still
    return ran, [u.name for u in waiting]


def _error_line(error_json: Path) -> str:
    try:
        text = str(json.loads(error_json.read_text()).get("error") or "unknown error")
    except (OSError, ValueError, AttributeError) as exc:
        return f"{error_json}: unreadable ({type(exc).__name__})"
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return (lines[0] if lines else "unknown error")[:300]


def grid_status(out: Path, units: list[Unit]) -> dict:
    """Planned cells: done (result.json), failed (error.json, with its one-line error), not run."""
    done, failed, missing = [], [], []
    for cell in (c for u in units for c in u.cells):
        folder = out / "cells" / cell.name
        if (folder / "result.json").is_file():
            done.append(cell.name)
        elif (folder / "error.json").is_file():
            failed.append({"cell": cell.name, "error": _error_line(folder / "error.json")})
        else:
            missing.append(cell.name)
    return {"cells_planned": len(done) + len(failed) + len(missing), "cells_done": len(done),
            "failed_cells": failed, "cells_not_run": missing, "complete": not failed and not missing}


def run_benchmark(cfg: BenchmarkConfig, wait: bool = True) -> dict:
    """Check every input, run every missing cell this process can claim (then, with ``wait``, wait for the
    units other local processes hold), then aggregate (``report.write_report``) what finished.

    ``report["run"]`` says how the grid stands: ``complete`` (every planned cell has its result.json),
    ``failed_cells`` (cell + one-line error), ``cells_not_run``. Bad input raises a DefectfillError
    before anything is written to the output folder; a write failure there (disk full, read-only)
    raises OutputError, leaving the finished cells complete for a rerun.
    """
    from defectfill.benchmark.report import write_report

    cfg.validate()
    out = Path(cfg.output_dir)
    check_writable(out, "benchmark output folder")
    check_grid(cfg, out, write=False)
    units = plan(cfg)
    pending = [u for u in units if any(not _result(out, c).exists() for c in u.cells)]
    total = sum(len(u.cells) for u in units)
    skipped = sum(_result(out, c).exists() for u in units for c in u.cells)
    ctx = check_inputs(cfg, out, pending) if pending else None
    since = time.time()
    ran, busy = 0, []
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "benchmark_config.json", json.dumps(
            {"config": asdict(cfg), "versions": package_versions()}, indent=2, default=str))
        check_grid(cfg, out)
        removed = sweep(out)
        if removed:
            _log(f"removed {len(removed)} file(s) left by interrupted runs (e.g. {removed[0]})")
        if ctx is not None:
            _log(f"benchmark: {total} cells in {len(units)} units, {skipped} already done; output {out}")
            ran, busy = _run_pending(ctx, out, pending, since, wait)
            sweep(out)
        report = write_report(out)
    status = grid_status(out, units)
    report["run"] = {"cells_run": ran, "cells_skipped": skipped, "units_busy_elsewhere": busy,
                     "cells_failed": len(status["failed_cells"]), **status}
    return report


@one_line_errors
def benchmark_main(argv: list[str] | None = None) -> int:
    """Exit 0: every planned cell has its result; 1: some failed (listed) or were left to other processes;
    2: bad input or an output folder that cannot be written (one ``error:`` line)."""
    p = argparse.ArgumentParser(prog="defectfill benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--eval-data", default=None, help="separate evaluation folder (final evaluation only)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished cells")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the units other processes on this output folder are running")
    args = p.parse_args(argv)
    cfg = load_config(BenchmarkConfig, args.config, args.set, eval_data=args.eval_data, output_dir=args.output_dir)
    out = Path(cfg.output_dir)
    if args.report_only:
        from defectfill.benchmark.report import write_report

        if not (out / "cells").is_dir():
            raise DataError(f"{out}: no cells to report (run the benchmark into this output folder first)")
        with output_errors(out, "rerun with --report-only"):
            report = {**write_report(out), "run": {"cells_run": 0}}
        print(json.dumps({"output_dir": cfg.output_dir, **report["run"], "rows": len(report["rows"]),
                          "report": str(out / "results.md")}))
        return 0
    report = run_benchmark(cfg, wait=not args.no_wait)
    run = report["run"]
    for f in run["failed_cells"]:
        print(f"failed: {f['cell']}: {f['error']}", file=sys.stderr)
    parts = [f"{run['cells_done']} of {run['cells_planned']} cells done", f"{run['cells_failed']} failed"]
    if run["cells_not_run"]:
        parts.append(f"{len(run['cells_not_run'])} not run (held by other processes: "
                     f"{', '.join(run['units_busy_elsewhere']) or 'none'})")
    hint = "" if run["complete"] else "; rerun the same command to " + (
        "retry the failed cells" if run["cells_failed"] else "finish the grid")
    print(f"benchmark: {', '.join(parts)}; report {out / 'results.md'}{hint}", file=sys.stderr)
    print(json.dumps({"output_dir": cfg.output_dir, "complete": run["complete"], "cells_run": run["cells_run"],
                      "cells_skipped": run["cells_skipped"], "cells_failed": run["cells_failed"],
                      "cells_not_run": len(run["cells_not_run"]), "units_busy_elsewhere": run["units_busy_elsewhere"],
                      "rows": len(report["rows"]), "report": str(out / "results.md")}))
    return 0 if run["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(benchmark_main())
