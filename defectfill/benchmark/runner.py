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
same output folder share the grid (e.g. one per CPU core with ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from defectfill.config import load_config
from defectfill.errors import ConfigError, DataError, one_line_errors
from defectfill.runinfo import atomic_write_text, package_versions

REAL_ONLY = "real_only"
NEW_FABRIC = "new_"  # setting prefix of the new-fabric protocol: new_<fabric type>
KINDS = ("real_only", "defectfill", "copy_paste", "multistage", "dgt")
TASKS = ("segmenter", "rtdetr")
MAIN = "main"


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
    generators: list = field(default_factory=lambda: [{"name": REAL_ONLY, "kind": REAL_ONLY}])
    synthetic_counts: list = field(default_factory=lambda: [4])  # a generator's own `counts` overrides it
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    segmenter: dict = field(default_factory=dict)  # SegmenterConfig overrides, the same for every cell
    detector: dict = field(default_factory=dict)  # DetectorConfig overrides + steps (+ eval_good_tiles_per_image)
    generate: dict = field(default_factory=dict)  # GenerateConfig overrides for every generator
    metrics: dict = field(default_factory=dict)  # generation_metrics keywords (crop, features, ...)
    label_noise: dict | None = None  # {split_long: 4.0, generators: [real_only, ...]} (RT-DETR only)
    leave_out: dict | None = None  # {defect_type: nep, generators: [...], tasks: [...]}
    # new-fabric protocol: {targets: [fabric_02, ...], generators: [...], tasks: [...]} (see NEW_FABRIC)
    new_fabric: dict | None = None
    gallery_rows: int = 6
    model: str = "runs/tiny-sd2-inpainting"  # base model for defectfill; the tiny one is made if missing
    base_model_note: str = ""  # what the DefectFill row's base model is (shown in the report)
    device: str = "cpu"

    def validate(self) -> None:
        if len(self.seeds) < 3:
            raise ConfigError(f"seeds: need at least 3 seeds, got {self.seeds}")
        if not self.synthetic_counts or any(int(c) < 1 for c in self.synthetic_counts):
            raise ConfigError(f"synthetic_counts must be positive integers, got {self.synthetic_counts}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"tasks: unknown {bad} (choose from {', '.join(TASKS)})")
        names = set()
        for g in self.generators:
            if not isinstance(g, dict) or "name" not in g:
                raise ConfigError(f"generators: each entry needs a name, got {g!r}")
            kind = g.get("kind", g["name"])
            if kind not in KINDS:
                raise ConfigError(f"generator {g['name']!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
            if g["name"] in names:
                raise ConfigError(f"generator name {g['name']!r} repeated")
            if "counts" in g and (not g["counts"] or any(int(c) < 1 for c in g["counts"])):
                raise ConfigError(f"generator {g['name']!r}: counts must be positive integers, got {g['counts']}")
            names.add(g["name"])
        if REAL_ONLY not in names:
            self.generators = [{"name": REAL_ONLY, "kind": REAL_ONLY}, *self.generators]
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


def _kind(spec: dict) -> str:
    return spec.get("kind", spec["name"])


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
            cells = [Cell(t, MAIN, spec["name"], n, seed) for t in cfg.tasks for n in ns]
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
            tasks = [t for t in cfg.new_fabric.get("tasks", cfg.tasks) if t in cfg.tasks]
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


TINY_MODEL_NAME = "tiny-sd2-inpainting"


def _ensure_model(cfg: BenchmarkConfig) -> str:
    """The DefectFill base: a hub id or local folder as given; a missing ``.../tiny-sd2-inpainting``
    folder is made with ``make_tiny_pipeline`` (tests and the CPU profiles)."""
    path = Path(cfg.model)
    if path.name != TINY_MODEL_NAME or (path / "model_index.json").exists():
        return cfg.model if not path.exists() else str(path.resolve())
    if not (path / "model_index.json").exists():
        from defectfill.models.tiny import make_tiny_pipeline

        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        make_tiny_pipeline(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path.resolve())


class Context:
    """Everything a unit needs that is shared across units: splits, evaluation data, eval tiles."""

    def __init__(self, cfg: BenchmarkConfig, out: Path):
        from defectfill.downstream.segmenter import SegmenterConfig

        self.cfg, self.out = cfg, out
        self.data = Path(cfg.data_dir)
        self.seg = load_config(SegmenterConfig, **cfg.segmenter)
        defect, good = _select_ids(self.data, cfg.max_images)
        self.types = {k: v for k, v in _defect_types(self.data).items() if k in set(defect)}
        if cfg.eval_data:
            self.eval_dir = Path(cfg.eval_data)
            _select_ids(self.eval_dir, None)
            self.pool_defect, self.pool_good = defect, good
            self.eval_source = {"kind": "eval_data", "path": str(cfg.eval_data)}
        else:
            held = self._split(defect, good, cfg.eval_fraction, cfg.eval_split_seed)
            self.pool_defect = [i for i in defect if i not in held]
            self.pool_good = [i for i in good if i not in held]
            self.eval_dir = materialize(self.data, held, out / "work" / "eval_data")
            self.eval_source = {"kind": "held_out_split", "fraction": cfg.eval_fraction, "seed": cfg.eval_split_seed}
        self.eval_types = _defect_types(self.eval_dir)
        eval_good = sorted(p.stem for p in (self.eval_dir / "good").glob("*") if p.is_file())
        self.eval_source["eval_ids"] = sorted(self.eval_types) + eval_good
        self.left_out = cfg.leave_out["defect_type"] if cfg.leave_out else None
        if self.left_out:
            if self.left_out not in set(self.types.values()):
                raise DataError(f"{self.data}: leave_out.defect_type {self.left_out!r} has no training images "
                                f"(types: {', '.join(sorted(set(self.types.values())))})")
            if self.left_out not in set(self.eval_types.values()):
                raise DataError(f"{self.eval_dir}: no evaluation image of leave_out.defect_type {self.left_out!r}")
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
        """Held-out source ids, stratified by defect type (good images are one more group); a type
        with one image stays on the training side (``detect.dataset.split_by_source``)."""
        from defectfill.detect.dataset import split_by_source

        groups: dict[str, list[str]] = {}
        for i in defect:
            groups.setdefault(f"type:{self.types.get(i, 'defect')}", []).append(i)
        if good:
            groups["good"] = list(good)
        return split_by_source(groups, fraction, seed)

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


def _claim(lock: Path) -> bool:
    """Create ``lock`` exclusively (pid@host inside); a lock of a dead local process is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()}@{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid, host = lock.read_text().strip().split("@", 1)
                alive = host != socket.gethostname()
                if not alive:
                    os.kill(int(pid), 0)
                    alive = True
            except (OSError, ValueError):
                alive = False
            if alive:
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


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
    model = _ensure_model(ctx.cfg) if _kind(unit.spec) == "defectfill" else None
    gen_dir = unit_dir / "gen"
    shutil.rmtree(gen_dir, ignore_errors=True)
    job = {"kind": "generator", "spec": unit.spec, "model": model, "train_dir": str(train_dir),
           "fit_dir": str(unit_dir / "fit"), "gen_dir": str(gen_dir), "seed": unit.seed,
           "count": max(_counts(unit.spec, ctx.cfg.synthetic_counts)),
           "clean_dir": str(clean_dir) if clean_dir else None,
           "generate": ctx.cfg.generate}
    run = run_job(job, unit_dir / "generator_job")
    if _kind(unit.spec) == "defectfill":
        run["base_model"] = {"path": model, "note": ctx.cfg.base_model_note or _base_model_note(model)}
    try:
        from defectfill.benchmark.gallery import generation_metrics

        t0 = time.perf_counter()
        run["generation_metrics"] = generation_metrics(gen_dir, train_dir, seed=unit.seed, **ctx.cfg.metrics)
        run["generation_metrics"]["seconds"] = time.perf_counter() - t0
    except Exception as exc:  # metrics are a report column, not a reason to lose the cell
        run["generation_metrics"] = {"error": f"{type(exc).__name__}: {exc}"}
    atomic_write_text(cached, json.dumps(run, indent=2, default=str))
    return run


def _base_model_note(model: str) -> str:
    index = Path(model) / "model_index.json"
    tiny = "tiny" in Path(model).name or (Path(model) / "tiny_model.json").is_file()
    what = "a tiny RANDOM inpainting pipeline (tests/demo; not Stable Diffusion 2)" if tiny else "inpainting base"
    return f"{what} at {model}" + ("" if index.is_file() else " (missing)")


def run_unit(ctx: Context, unit: Unit, todo: list[Cell]) -> int:
    """Fit/generate once, then run ``todo`` cells; every cell ends in result.json or error.json."""
    from defectfill.downstream.tiles import images_from_reference, images_from_synthetic

    seed = unit.seed
    base = ctx.out / "work" / f"s{seed}" / unit.data
    train_ids, val_ids = ctx.split(seed, unit.data)
    train_dir = materialize(ctx.data, train_ids, base / "train")
    pool_dir = materialize(ctx.data, train_ids | val_ids, base / "pool")
    unit_dir = base / unit.spec["name"]
    gen_run, gen_dir, error = {}, None, None
    if _kind(unit.spec) != REAL_ONLY:
        try:
            _log(f"{unit.name}: fit + generate")
            clean_dir = None
            if ctx.target(unit.data):  # synthesise onto the target fabric's clean images only
                clean_dir = materialize(ctx.data, ctx.target_clean(unit.data, train_ids), base / "target_clean") / "good"
            gen_run = _generator_run(ctx, unit, unit_dir, train_dir, clean_dir)
            gen_dir = Path(gen_run["generated_dir"])
        except Exception as exc:
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
            else:
                result = _detector_cell(ctx, cell, unit_dir, pool_dir, val_ids, gen_dir)
        except Exception as exc:
            tb = getattr(exc, "log_tail", "") or traceback.format_exc(limit=-6)
            atomic_write_text(cell_dir / "error.json", json.dumps(
                {**asdict(cell), "cell": cell.name, "error": f"{type(exc).__name__}: {exc}", "traceback": tb},
                indent=2))
            _log(f"{cell.name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        record = {**asdict(cell), "cell": cell.name, "unit": unit.name, "eval_source": ctx.eval_source_for(cell.setting),
                  "generator_kind": _kind(unit.spec), "generator_run": gen_run,
                  "cell_seconds": time.perf_counter() - start,
                  "sidecar_example": _first_sidecar(gen_dir), **result}
        atomic_write_text(cell_dir / "result.json", json.dumps(record, indent=2, default=str))
        (cell_dir / "error.json").unlink(missing_ok=True)
        main = result["metrics"]
        score = (f"pixel AP {main['pixel_ap']:.4f}" if cell.task == "segmenter"
                 else f"mAP50 {main['map50'] or 0:.4f} recall {main['recall'] or 0:.3f}")
        _log(f"{cell.name}: {score} ({time.perf_counter() - start:.0f} s)")
        done += 1
    return done


def _first_sidecar(root: Path | None) -> str | None:
    if root is None:
        return None
    sides = sorted((root / "sidecars").glob("*.json"))
    return str(sides[0]) if sides else None


GRID_KEYS = ("data_dir", "eval_data", "eval_fraction", "eval_split_seed", "val_fraction", "max_images", "segmenter",
             "detector", "generate", "metrics", "model", "label_noise", "leave_out", "new_fabric")


def check_grid(cfg: BenchmarkConfig, out: Path) -> None:
    """Refuse to mix cells of different settings in one output folder (``grid.json`` keeps the first run's).

    Seeds, counts and generators may be added later; a generator's spec may not change.
    """
    grid = {"settings": {k: getattr(cfg, k) for k in GRID_KEYS},
            "generators": {g["name"]: g for g in cfg.generators}}
    grid = json.loads(json.dumps(grid, default=str))
    path = out / "grid.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(grid, indent=2))
        return
    old = json.loads(path.read_text())
    changed = [k for k in GRID_KEYS if old["settings"].get(k) != grid["settings"][k]]
    changed += [f"generators.{n}" for n, g in grid["generators"].items() if n in old["generators"]
                and old["generators"][n] != g]
    if changed:
        raise ConfigError(f"{out}: holds cells run with other settings ({', '.join(changed)} differ from "
                          f"{path}); use a new output_dir or delete it")
    old["generators"].update(grid["generators"])
    atomic_write_text(path, json.dumps(old, indent=2))


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Run every missing cell this process can claim, then aggregate (``report.write_report``)."""
    from defectfill.benchmark.report import write_report

    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark_config.json", json.dumps(
        {"config": asdict(cfg), "versions": package_versions()}, indent=2, default=str))
    check_grid(cfg, out)
    units = plan(cfg)
    pending = [(u, [c for c in u.cells if not (out / "cells" / c.name / "result.json").exists()]) for u in units]
    total = sum(len(u.cells) for u in units)
    skipped = total - sum(len(t) for _, t in pending)
    ran, busy = 0, []
    if any(t for _, t in pending):
        ctx = Context(cfg, out)
        _log(f"benchmark: {total} cells in {len(units)} units, {skipped} already done; output {out}")
        for unit, todo in pending:
            if not todo:
                continue
            lock = out / "locks" / f"{unit.name}.lock"
            if not _claim(lock):
                busy.append(unit.name)
                continue
            try:
                todo = [c for c in todo if not (out / "cells" / c.name / "result.json").exists()]
                if todo:  # another process may have finished the unit meanwhile
                    ran += run_unit(ctx, unit, todo)
            finally:
                lock.unlink(missing_ok=True)
    report = write_report(out)
    report["run"] = {"cells_run": ran, "cells_skipped": skipped, "units_busy_elsewhere": busy,
                     "cells_failed": len(report.get("errors", []))}
    return report


@one_line_errors
def benchmark_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="defectfill benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--eval-data", default=None, help="separate evaluation folder (final evaluation only)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished cells")
    args = p.parse_args(argv)
    cfg = load_config(BenchmarkConfig, args.config, args.set, eval_data=args.eval_data, output_dir=args.output_dir)
    if args.report_only:
        from defectfill.benchmark.report import write_report

        report = {**write_report(cfg.output_dir), "run": {"cells_run": 0}}
    else:
        report = run_benchmark(cfg)
    print(json.dumps({"output_dir": cfg.output_dir, **report["run"], "rows": len(report["rows"]),
                      "report": str(Path(cfg.output_dir) / "results.md")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchmark_main())
