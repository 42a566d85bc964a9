"""Benchmark runner: which generator's synthetic defects help a downstream model, and by how much.

Grid: settings x evaluation folds x generators x synthetic counts x seeds x tasks
(``defectfill.benchmark.tasks``: segmenter, rtdetr, openset). Settings:

- ``main``: every real defect of the training side trains;
- ``fewshot<k>`` (``real_per_type: [k, ...]``): per seed, k real defect images per defect type are
  drawn from the training side; real-only trains on those (+ the clean images), generators fit on
  only those and synthesise onto the training side's clean images;
- ``new_<fabric>`` (``new_fabric``): no defect image of that fabric trains or fits anything;
  generators synthesise onto the half of its clean images that does not evaluate; evaluation on
  all its defect images and the other half of its clean images;
- ``without_<type>`` (``leave_out``) and ``split_long<k>`` (``label_noise``, RT-DETR): the open questions.

Protocol (``folds: K``, default 5): cross-validation by source over the whole ``data_dir``; every
source image (and every crop of it) is evaluated in exactly one fold, folds stratified by defect
type and fabric (``defectfill.data.splits``). The training side of a fold is split once into
train/val (val only picks the segmenter's F1 threshold and is RT-DETR's val split; fixed per fold,
so a generator fits once per fold and setting and every seed reuses the fit, except few-shot, whose
training defects differ per seed). ``folds: 1``: one held-out split (``eval_fraction``);
``--eval-data-dir DIR``: ``data_dir`` all trains and DIR evaluates.

Cells are written atomically (``cells/<cell>/result.json``) and skipped when present; a failing
cell writes ``error.json`` instead and is retried on the next run. Work is claimed per unit
(fold, setting, generator; all seeds) with lock files (``locks``), so several ``defectfill
benchmark`` processes share one output folder. Every cell runs with ``threads`` torch threads
(recorded in its result): the same config, fold and seed give the same numbers on the same
machine whatever the number of processes.

Command line: ``defectfill benchmark`` (:mod:`defectfill.cli.benchmark`).

Everything is checked before the first cell (config, every image and mask, each generator's
``check_init_args``, the output folder); a problem is one ``error:`` line and exit code 2, with
nothing written. Exit code 1: the run finished but some planned cells failed; 0: complete.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from defectfill.benchmark import executors
from defectfill.benchmark import tasks as task_registry
from defectfill.benchmark.config import (  # noqa: F401
    FEW_SHOT,
    MAIN,
    NEW_FABRIC,
    OPENSET,
    REAL_ONLY,
    TASKS,
    BenchmarkConfig,
    sub_config,
)
from defectfill.benchmark.locks import HOST, WAIT_POLL_S, claim, holder, log, release, start_ticks, sweep  # noqa: F401
from defectfill.benchmark.plan import Cell, Unit, counts_of, fold_ids, kind, new_fabric_targets, plan  # noqa: F401
from defectfill.benchmark.tasks import UnitData
from defectfill.benchmark.worker import STOP_ERRNOS, check_generation_settings, run_job
from defectfill.config import load_config
from defectfill.data.splits import (  # noqa: F401
    cv_folds,
    defect_types,
    few_shot_sample,
    held_out_split,
    manifest_column,
    select_ids,
    split_by_source,
    split_ids,
)
from defectfill.errors import ConfigError, DataError, OutputError, check_writable, output_errors
from defectfill.generators import import_class
from defectfill.runinfo import atomic_write_text, package_versions

_log = log


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
    """The splits of every fold and setting, the evaluation folders and their tiles."""

    def __init__(self, cfg: BenchmarkConfig, out: Path):
        from defectfill.downstream.segmenter import SegmenterConfig

        self.cfg, self.out = cfg, out
        self.data = Path(cfg.data_dir)
        self.seg = load_config(SegmenterConfig, **cfg.segmenter)
        defect, good = select_ids(self.data, cfg.max_images)
        self.all_defect, self.all_good = defect, good
        self.types = {k: v for k, v in defect_types(self.data).items() if k in set(defect)}
        self.fabrics = manifest_column(self.data, "fabric_type")
        self.folds = fold_ids(cfg)
        self._fold_of: dict[str, int] = {}
        self._eval_dirs: dict[str, Path] = {}
        self._eval_tiles: dict[tuple, dict] = {}  # one (setting, fold) at a time: units run fold by fold
        if cfg.eval_data:
            self._eval_root = Path(cfg.eval_data)
            select_ids(self._eval_root)
            self.eval_fabrics = manifest_column(self._eval_root, "fabric_type")
            self.eval_source = {"kind": "eval_data", "path": str(cfg.eval_data)}
        else:
            self._eval_root = None
            self.eval_fabrics = self.fabrics
            if cfg.folds >= 2:
                self._fold_of = cv_folds(defect, good, self.types, self.fabrics, cfg.folds, cfg.eval_split_seed)
                self.eval_source = {"kind": "cross_validation", "folds": cfg.folds, "seed": cfg.eval_split_seed}
            else:
                held = split_ids(defect, good, self.types, cfg.eval_fraction, cfg.eval_split_seed)
                self._fold_of = {i: 0 for i in held}
                self.eval_source = {"kind": "held_out_split", "fraction": cfg.eval_fraction,
                                    "seed": cfg.eval_split_seed}
        self.left_out = cfg.leave_out["defect_type"] if cfg.leave_out else None
        if self.left_out:
            if self.left_out not in set(self.types.values()):
                raise DataError(f"{self.data}: leave_out.defect_type {self.left_out!r} has no training images "
                                f"(types: {', '.join(sorted(set(self.types.values())))})")
            for fold in self.folds:
                if self.left_out not in set(self.eval_types(fold).values()):
                    raise DataError(f"{self.eval_where(fold)}: no evaluation image of leave_out.defect_type "
                                    f"{self.left_out!r}")
        self.targets: dict[str, dict] = {}
        for target in new_fabric_targets(cfg):
            self.targets[target] = self._new_fabric(target)

    # ---- who evaluates where

    def eval_where(self, fold: int) -> str:
        if self._eval_root is not None:
            return str(self._eval_root)
        return f"{self.data} (evaluation fold {fold} of {self.eval_source})"

    def eval_ids(self, fold: int) -> set[str]:
        """Source ids of ``data_dir`` that fold ``fold`` evaluates (none with ``eval_data``)."""
        return {i for i, f in self._fold_of.items() if f == fold}

    def eval_types(self, fold: int) -> dict[str, str]:
        """defect id → type of the fold's evaluation defect images."""
        if self._eval_root is not None:
            return defect_types(self._eval_root)
        held = self.eval_ids(fold)
        return {i: t for i, t in self.types.items() if i in held}

    def fabric_of(self, source_id: str) -> str:
        return self.eval_fabrics.get(source_id) or self.fabrics.get(source_id) or ""

    def _new_fabric(self, target: str) -> dict:
        """A new-fabric target: its evaluation ids (defects + half its clean images) and its training clean ids."""
        src = self._eval_root or self.data
        src_fabrics = manifest_column(src, "fabric_type")
        src_defect, src_good = select_ids(src, None if self._eval_root else self.cfg.max_images)
        ids = [i for i in src_defect if src_fabrics.get(i) == target]
        if not ids:
            raise DataError(f"{src / 'manifest.csv'}: no defect image of new_fabric target {target!r} "
                            f"(fabric_type column; found {', '.join(sorted(set(src_fabrics.values()))) or 'none'})")
        clean = sorted(g for g in self.all_good if self.fabrics.get(g) == target)
        if self._eval_root is not None:
            eval_good = sorted(g for g in src_good if src_fabrics.get(g) == target)
        else:
            fraction = self.cfg.new_fabric.get("eval_good_fraction", 0.5)
            eval_good = sorted(split_by_source({"good": clean}, fraction, self.cfg.eval_split_seed)) if len(clean) > 1 \
                else []
        train_clean = [g for g in clean if g not in set(eval_good) or self._eval_root is not None]
        if not train_clean:
            raise DataError(f"{self.data}: no clean good/ image of new_fabric target {target!r} to synthesise onto")
        return {"src": src, "eval_ids": sorted(ids) + eval_good, "train_clean": set(train_clean)}

    @staticmethod
    def target(data: str) -> str | None:
        """The target fabric of a new-fabric setting (``new_<fabric>``), else None."""
        return data[len(NEW_FABRIC):] if data.startswith(NEW_FABRIC) else None

    @staticmethod
    def seed_dependent(data: str) -> bool:
        """Whether a setting's training data differs per seed (few-shot draws its defects per seed)."""
        return data.startswith(FEW_SHOT)

    # ---- training side

    def split(self, seed: int, data: str = MAIN, fold: int = 0) -> tuple[set[str], set[str]]:
        """(train ids, val ids) of a setting on a fold; val is fixed per fold (seed only draws few-shot defects)."""
        val_seed = self.cfg.eval_split_seed + 1 + fold
        fraction = self.cfg.val_fraction

        def val_of(defect: list[str], good: list[str]) -> set[str]:
            return split_ids(defect, good, self.types, fraction, val_seed) if fraction > 0 else set()

        target = self.target(data)
        if target is not None:
            defect = [i for i in self.all_defect if self.fabrics.get(i) != target]
            others = [g for g in self.all_good if self.fabrics.get(g) != target]
            val = val_of(defect, others)
            ids = set(defect) | set(others) | self.targets[target]["train_clean"]
            return ids - val, ids & val
        held = self.eval_ids(fold)
        defect = [i for i in self.all_defect if i not in held]
        good = [g for g in self.all_good if g not in held]
        if data.startswith("without_"):
            defect = [i for i in defect if self.types.get(i) != self.left_out]
        val = val_of(defect, good)
        train = (set(defect) | set(good)) - val
        if data.startswith(FEW_SHOT):
            k = int(data[len(FEW_SHOT):])
            picked = few_shot_sample({i: self.types[i] for i in defect if i in train}, k, seed)
            train = {i for i in train if i in picked or i not in self.types}
        return train, val

    def clean_ids(self, data: str, train_ids: set[str]) -> set[str] | None:
        """The clean images generators synthesise onto when not the training side's good/ (new fabric)."""
        target = self.target(data)
        return None if target is None else {g for g in self.targets[target]["train_clean"] if g in train_ids}

    # ---- evaluation side

    def eval_dir_for(self, fold: int, data: str = MAIN) -> Path:
        """The evaluation folder of a setting on a fold (written on first use)."""
        target = self.target(data)
        if target is not None:
            t = self.targets[target]
            return self._materialize_eval(f"eval_{data}", t["src"], set(t["eval_ids"]))
        if self._eval_root is not None:
            return self._eval_root
        return self._materialize_eval(f"eval_f{fold}", self.data, self.eval_ids(fold))

    def _materialize_eval(self, name: str, src: Path, ids: set[str]) -> Path:
        if name not in self._eval_dirs:
            self._eval_dirs[name] = materialize(src, ids, self.out / "work" / name)
        return self._eval_dirs[name]

    @property
    def eval_dir(self) -> Path:
        return self.eval_dir_for(0, MAIN)

    def eval_source_for(self, fold: int, data: str = MAIN) -> dict:
        target = self.target(data)
        if target is not None:
            t = self.targets[target]
            return {"kind": "new_fabric", "target": target, "path": str(t["src"]), "eval_ids": t["eval_ids"]}
        ids = sorted(self.eval_ids(fold)) if self._eval_root is None else "all of eval_data"
        return {**self.eval_source, "fold": fold, "eval_ids": ids}

    def _eval_key(self, data: str, fold: int) -> tuple:
        return (data, 0) if self.target(data) else (MAIN, fold)

    def eval_tiles(self, data: str = MAIN, fold: int = 0) -> dict:
        """name → (EvalTiles, per-image defect type or "good") of a setting: ``all`` and, with ``leave_out``,
        the left-out type only."""
        from defectfill.downstream.segmenter import eval_tiles_for
        from defectfill.downstream.tiles import images_from_reference

        key = self._eval_key(data, fold)
        cache = self._eval_tiles
        if key not in cache:
            eval_dir = self.eval_dir_for(key[1], key[0])
            types = defect_types(eval_dir)
            images = images_from_reference(eval_dir, self.seg.in_channels)
            groups = [types.get(im.id, "good") for im in images]
            subsets = {"all": (eval_tiles_for(self.seg, images), groups)}
            if self.left_out and key[0] == MAIN:
                keep = [im for im, g in zip(images, groups) if g == self.left_out]
                subsets[f"type_{self.left_out}"] = (eval_tiles_for(self.seg, keep), [self.left_out] * len(keep))
            cache.clear()
            cache[key] = subsets
        return cache[key]

    def eval_detection(self, data: str = MAIN, fold: int = 0) -> dict[str, str]:
        """name → data.yaml of the evaluation detection folders of a setting (all, and the left-out type only)."""
        from defectfill.detect.dataset import build_eval_dataset

        key = self._eval_key(data, fold)
        det = self.cfg.detector
        kw = dict(tile=det.get("tile", 256), single_class=det.get("single_class", True),
                  good_tiles_per_image=det.get("eval_good_tiles_per_image"),
                  merge_gap=det.get("merge_gap", 0), min_box_side=det.get("min_box_side", 1))  # the grid's boxes
        root = self.out / "work" / "eval_det" / f"{key[0]}-f{key[1]}"
        folders = {"all": (root / "all", None)}
        if key[0] == MAIN and self.left_out and "rtdetr" in self.cfg.leave_out.get("tasks", self.cfg.tasks):
            folders[f"type_{self.left_out}"] = (root / f"type_{self.left_out}", [self.left_out])
        found = {}
        for name, (folder, types) in folders.items():
            if not (folder / "data.yaml").is_file():
                build_eval_dataset(self.eval_dir_for(key[1], key[0]), folder, defect_types=types, **kw,
                                   **({"include_good": False} if types else {}))
            found[name] = str(folder / "data.yaml")
        return found


# ----------------------------------------------------------------------------- units


def _generator_run(ctx: Context, unit: Unit, seed: int, fit_dir: Path, gen_root: Path, train_dir: Path,
                   clean_dir: Path | None = None) -> dict:
    """Fit (once per fit folder) + generate in a child process (cached in ``gen_root/generator.json``),
    then generation metrics."""
    cached = gen_root / "generator.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    gen_dir = gen_root / "gen"
    shutil.rmtree(gen_dir, ignore_errors=True)
    job = {"kind": "generator", "spec": unit.spec, "train_dir": str(train_dir), "fit_dir": str(fit_dir),
           "gen_dir": str(gen_dir), "seed": seed, "fit_seed": seed if ctx.seed_dependent(unit.data) else unit.fold,
           "count": max(counts_of(unit.spec, ctx.cfg.synthetic_counts)),
           "clean_dir": str(clean_dir) if clean_dir else None, "generate": ctx.cfg.generate}
    env = {"OMP_NUM_THREADS": str(ctx.cfg.threads)} if ctx.cfg.threads else None
    run = run_job(job, gen_root / "generator_job", env=env)
    side = _first_sidecar(gen_dir)
    about = json.loads(Path(side).read_text()) if side else {}
    if about.get("base_model"):  # generators built on a base model say which (DefectFill)
        run["base_model"] = {"path": about["base_model"], "note": about.get("base_model_note", "")}
    if not ctx.cfg.generation_metrics:
        run["generation_metrics"] = run["boundary_realism"] = {"skipped": "generation_metrics: false in the config"}
        atomic_write_text(cached, json.dumps(run, indent=2, default=str))
        return run
    from defectfill.benchmark.gallery import boundary_realism, generation_metrics

    try:
        t0 = time.perf_counter()
        run["generation_metrics"] = generation_metrics(gen_dir, train_dir, seed=seed, **ctx.cfg.metrics)
        run["generation_metrics"]["seconds"] = time.perf_counter() - t0
    except Exception as exc:  # metrics are a report column, not a reason to lose the cell
        run["generation_metrics"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        t0 = time.perf_counter()
        keys = ("features", "features_weights", "device")
        run["boundary_realism"] = boundary_realism(gen_dir, train_dir, seed=seed,
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


def runtime_record(cfg: BenchmarkConfig) -> dict:
    """What a cell's numbers depend on besides the config: torch threads and versions, the machine."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "threads_setting": cfg.threads,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
            "machine": platform.machine(), "processor_count": os.cpu_count(), "host": HOST, "pid": os.getpid(),
            "ray_node": executors.ray_node_id()}


def _unit_data(ctx: Context, unit: Unit, seed: int) -> tuple[UnitData, dict]:
    """The split, folders and generated samples of one (unit, seed): (data, generator run record)."""
    base = ctx.out / "work" / f"f{unit.fold}" / unit.data
    side = base / f"s{seed}" if ctx.seed_dependent(unit.data) else base
    train_ids, val_ids = ctx.split(seed, unit.data, unit.fold)
    train_dir = materialize(ctx.data, train_ids, side / "train")
    pool_dir = materialize(ctx.data, train_ids | val_ids, side / "pool")
    unit_dir = base / unit.spec["name"]
    data = UnitData(train_ids, val_ids, pool_dir, train_dir, unit_dir)
    if kind(unit.spec) == REAL_ONLY:
        return data, {}
    _log(f"{unit.name} s{seed}: fit + generate")
    clean = ctx.clean_ids(unit.data, train_ids)
    clean_dir = materialize(ctx.data, clean, side / "target_clean") / "good" if clean is not None else None
    fit_dir = unit_dir / (f"fit_s{seed}" if ctx.seed_dependent(unit.data) else "fit")
    run = _generator_run(ctx, unit, seed, fit_dir, unit_dir / f"s{seed}", train_dir, clean_dir)
    data.gen_dir = Path(run["generated_dir"])
    return data, run


def run_unit(ctx: Context, unit: Unit, todo: list[Cell]) -> int:
    """Per seed: fit (or reuse the fit) and generate once, then run that seed's ``todo`` cells; every cell
    ends in result.json or error.json (unless the output folder cannot be written: then it propagates)."""
    import torch

    if ctx.cfg.threads:
        torch.set_num_threads(ctx.cfg.threads)
    done = 0
    for seed in sorted({c.seed for c in todo}):
        data, gen_run, error = None, {}, None
        try:
            data, gen_run = _unit_data(ctx, unit, seed)
        except Exception as exc:
            if _stops_the_run(exc):
                raise
            error = exc
        for cell in (c for c in todo if c.seed == seed):
            cell_dir = ctx.out / "cells" / cell.name
            start = time.perf_counter()
            task = task_registry.get(cell.task)
            try:
                if error is not None:
                    raise error
                result = task.run(ctx, cell, data)
            except Exception as exc:
                if _stops_the_run(exc):
                    raise
                tb = getattr(exc, "log_tail", "") or traceback.format_exc(limit=-6)
                atomic_write_text(cell_dir / "error.json", json.dumps(
                    {**asdict(cell), "cell": cell.name, "error": f"{type(exc).__name__}: {exc}", "traceback": tb},
                    indent=2))
                _log(f"{cell.name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            record = {**asdict(cell), "cell": cell.name, "unit": unit.name,
                      "eval_source": ctx.eval_source_for(cell.fold, cell.setting),
                      "train_ids": sorted(data.train_ids), "generator_class": kind(unit.spec),
                      "generator_run": gen_run, "cell_seconds": time.perf_counter() - start,
                      "runtime": runtime_record(ctx.cfg), "sidecar_example": _first_sidecar(data.gen_dir), **result}
            atomic_write_text(cell_dir / "result.json", json.dumps(record, indent=2, default=str))
            (cell_dir / "error.json").unlink(missing_ok=True)
            _log(f"{cell.name}: {task.summary(result['metrics'])} ({time.perf_counter() - start:.0f} s)")
            done += 1
    return done


def _first_sidecar(root: Path | None) -> str | None:
    if root is None:
        return None
    sides = sorted((root / "sidecars").glob("*.json"))
    return str(sides[0]) if sides else None


GRID_KEYS = ("data_dir", "eval_data", "folds", "eval_fraction", "eval_split_seed", "val_fraction", "max_images", "segmenter",
             "detector", "generate", "metrics", "boundary", "openset", "label_noise", "leave_out", "new_fabric",
             "real_per_type", "threads")


def check_grid(cfg: BenchmarkConfig, out: Path, write: bool = True) -> None:
    """Refuse to mix cells of different settings in one output folder (``grid.json`` keeps the first run's).

    Seeds, counts, generators and settings (few-shot sizes, new fabric) may be added later; a generator's
    spec may not change. With
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
    new_settings = grid["settings"]
    changed = [k for k in GRID_KEYS if old_settings.get(k) != new_settings[k] and not _adds_settings(k, old_settings.get(k),
                                                                                                      new_settings[k])]
    changed += [f"generators.{n}" for n, g in grid["generators"].items() if n in old_generators
                and old_generators[n] != g]
    if changed:
        raise ConfigError(f"{out}: holds cells run with other settings ({', '.join(changed)} differ from "
                          f"{path}); use a new output_dir or delete it")
    if write:
        old_generators.update(grid["generators"])
        old_settings["real_per_type"] = sorted({*map(str, old_settings.get("real_per_type") or []),
                                                *map(str, new_settings["real_per_type"])})
        old_settings["new_fabric"] = old_settings.get("new_fabric") or new_settings["new_fabric"]
        atomic_write_text(path, json.dumps(old, indent=2))


def _adds_settings(key: str, old, new) -> bool:
    """Settings axes a later run may extend without touching earlier cells: more few-shot sizes
    (``real_per_type``), or the new-fabric setting where the folder had none (or the run asks for none)."""
    if key == "real_per_type":
        return True  # every value is its own setting: its cells are named by it
    return key == "new_fabric" and (old is None or new is None)


# ----------------------------------------------------------------------------- checks before any cell


def check_settings(cfg: BenchmarkConfig) -> None:
    """The sub-configs every cell uses (each task's settings, each generator's generation settings)."""
    for name in cfg.tasks:
        task_registry.get(name).check(cfg)
    if "segmenter" not in cfg.tasks:  # the evaluation tiles are cut with the segmenter's settings
        task_registry.get("segmenter").check(cfg)
    for spec in cfg.generators:
        if kind(spec) != REAL_ONLY:
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
    check_settings(cfg)
    check_data(cfg)
    checked = set()
    for unit in units:
        spec = unit.spec
        if kind(spec) != REAL_ONLY and spec["name"] not in checked:
            checked.add(spec["name"])
            try:
                import_class(kind(spec)).check_init_args(spec.get("init_args"))
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


def _try_unit(ctx: Context, out: Path, unit: Unit, since: float) -> int | None:
    """Run a unit's missing cells if its lock can be claimed: the number of cells run, None when another
    live process holds it."""
    def todo():
        return [c for c in unit.cells if not _result(out, c).exists() and not _failed_since(out, c, since)]

    if not todo():
        return 0
    lock = out / "locks" / f"{unit.name}.lock"
    if not claim(lock):
        return None
    try:
        cells = todo()  # another process may have finished the unit meanwhile
        return run_unit(ctx, unit, cells) if cells else 0
    finally:
        release(lock)


def _run_pending(ctx: Context, out: Path, units: list[Unit], since: float, wait: bool) -> tuple[int, list[str]]:
    """Run every unit this process can claim; then, with ``wait``, wait for the units live local processes
    hold (taking over those whose holder dies). Returns (cells run, units left to other processes)."""
    def one_pass(todo: list[Unit]) -> tuple[int, list[Unit]]:
        ran, held = 0, []
        for unit in todo:
            n = _try_unit(ctx, out, unit, since)
            if n is None:
                held.append(unit)
            else:
                ran += n
        return ran, held

    ran, waiting = one_pass(units)
    announced = False
    while waiting and wait:
        n, waiting = one_pass(waiting)  # units finished (or freed) since they were found held drop out first
        ran += n
        if not waiting:
            break
        holders = [holder(out / "locks" / f"{u.name}.lock") for u in waiting]
        if all(h is not None and h[0] == "remote" for h in holders):
            break  # another host's processes: their liveness cannot be checked from here
        if not announced:
            _log(f"waiting for {len(waiting)} unit(s) other processes hold: "
                 f"{', '.join(u.name for u in waiting[:6])}{' ...' if len(waiting) > 6 else ''}")
            announced = True
        time.sleep(WAIT_POLL_S)
    return ran, [u.name for u in waiting]


def run_unit_named(cfg: BenchmarkConfig, unit_name: str, since: float, cwd: str | None = None) -> int | None:
    """Run one unit of ``cfg``'s grid, named ``unit_name``, as a local process would: claim its lock and run its
    missing cells (those that failed after ``since`` are not retried). Returns the cells run, or None when
    another live process holds the unit. A plain function of picklable arguments: an executor's task
    (``executors``). ``cwd``: the folder relative paths of ``cfg`` are read from (the driver's)."""
    if cwd is not None:
        os.chdir(cwd)
    out = Path(cfg.output_dir)
    units = {u.name: u for u in plan(cfg)}
    if unit_name not in units:
        raise ConfigError(f"unit {unit_name!r} is not in this benchmark's grid")
    return _try_unit(Context(cfg, out), out, units[unit_name], since)


def _lock_state(out: Path):
    def state(unit: Unit) -> str | None:
        held = holder(out / "locks" / f"{unit.name}.lock")
        return held[0] if held else None
    return state


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
            if executors.executor_config(cfg.executor).kind == "ray":
                ran, busy = executors.run_ray(cfg, pending, since, wait, run_unit_named, _lock_state(out),
                                              _stops_the_run, _log, WAIT_POLL_S)
            else:
                ran, busy = _run_pending(ctx, out, pending, since, wait)
            sweep(out)
        report = _write_report_once(out, cfg)
    status = grid_status(out, units)
    report["run"] = {"cells_run": ran, "cells_skipped": skipped, "units_busy_elsewhere": busy,
                     "cells_failed": len(status["failed_cells"]), **status}
    return report


REPORT_LOCK = "report.lock"


def _write_report_once(out: Path, cfg: BenchmarkConfig) -> dict:
    """Write the report unless another live process on this folder is writing it (processes that share a
    grid finish together; one report from the same cells is enough). Then: ``{rows: [], report_by}``."""
    from defectfill.benchmark.report import write_report

    lock = out / "locks" / REPORT_LOCK
    if not claim(lock):
        by = holder(lock)
        _log(f"another process ({by[1] if by else 'unknown'}) is writing the report; this one does not")
        return {"rows": [], "report_by": by[1] if by else None}
    try:
        return write_report(out, cfg.stats)
    finally:
        release(lock)
