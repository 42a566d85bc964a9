"""The benchmark grid: which cells exist and how they group into units (one generator fit each)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from defectfill.benchmark.config import (
    ALL,
    FEW_SHOT,
    MAIN,
    NEW_FABRIC,
    OPENSET,
    REAL_ONLY,
    BenchmarkConfig,
)
from defectfill.data.splits import manifest_column, select_ids
from defectfill.errors import DataError


@dataclass
class Cell:
    """One downstream model: (task, setting, generator, synthetic count, fold, seed) → metrics."""

    task: str
    setting: str  # main, fewshot<k>, new_<fabric>, without_<type>, split_long<k>
    generator: str
    count: int
    seed: int
    fold: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}-{self.setting}-{self.generator}-n{self.count}-f{self.fold}-s{self.seed}"


@dataclass
class Unit:
    """One generator on one fold's data of one setting (``data``), all seeds: fitted once where the
    setting's training data does not depend on the seed (few-shot fits once per seed)."""

    fold: int
    data: str
    spec: dict
    cells: list

    @property
    def name(self) -> str:
        return f"f{self.fold}-{self.data}-{self.spec['name']}"

    @property
    def seeds(self) -> list[int]:
        return sorted({c.seed for c in self.cells})


def kind(spec: dict) -> str:
    """The generator's class path (or ``real_only``)."""
    return spec.get("class_path", spec["name"])


def counts_of(spec: dict, counts) -> list[int]:
    """A generator's synthetic counts: its own ``counts`` or the grid's ``synthetic_counts``, sorted."""
    return sorted({int(c) for c in spec.get("counts", counts)})


def fold_ids(cfg: BenchmarkConfig) -> list[int]:
    """The evaluation folds: 0..K-1 for cross-validation, [0] for one held-out split or ``eval_data``."""
    return list(range(cfg.folds)) if cfg.folds >= 2 and not cfg.eval_data else [0]


def new_fabric_targets(cfg: BenchmarkConfig) -> list[str]:
    """The new-fabric targets: the listed ones, or (``all``) every fabric of ``data_dir`` with at least
    ``min_defects`` defect images (default 3) and a clean image."""
    if not cfg.new_fabric:
        return []
    targets = cfg.new_fabric.get("targets", ALL)
    if targets != ALL:
        return list(targets)
    defect, good = select_ids(cfg.data_dir, cfg.max_images)
    fabrics = manifest_column(cfg.data_dir, "fabric_type")
    if not fabrics:
        raise DataError(f"{Path(cfg.data_dir) / 'manifest.csv'}: new_fabric needs a fabric_type column")
    n = Counter(fabrics.get(i) for i in defect)
    clean = {fabrics.get(g) for g in good}
    return sorted(f for f, k in n.items() if f and k >= cfg.new_fabric.get("min_defects", 3) and f in clean)


def _allowed(spec: dict, setting: str, listed: list | None = None) -> bool:
    """Whether a generator runs in a setting: its own ``settings`` list (main, fewshot<k>, new_fabric,
    without) and the setting's ``generators`` list both allow it."""
    family = "new_fabric" if setting.startswith(NEW_FABRIC) else "without" if setting.startswith("without_") \
        else setting
    own = spec.get("settings")
    return (own is None or family in own or spec["name"] == REAL_ONLY) and (listed is None or spec["name"] in listed)


def plan(cfg: BenchmarkConfig) -> list[Unit]:
    """Every unit and its cells, in run order (setting-major, then fold)."""
    counts = sorted({int(c) for c in cfg.synthetic_counts})
    tasks = [t for t in cfg.tasks if t != OPENSET]

    def ns(spec):
        return [0] if kind(spec) == REAL_ONLY else counts_of(spec, counts)

    units = []
    settings = ([MAIN] if ALL in cfg.real_per_type else []) + [f"{FEW_SHOT}{k}" for k in cfg.few_shot_settings()]
    for setting in settings:
        for fold in fold_ids(cfg):
            for spec in cfg.generators:
                if not _allowed(spec, setting):
                    continue
                cells = [Cell(t, setting, spec["name"], n, s, fold) for s in cfg.seeds for t in tasks
                         for n in ns(spec)]
                if setting == MAIN and cfg.label_noise and "rtdetr" in cfg.tasks and \
                        spec["name"] in cfg.label_noise.get("generators", [spec["name"]]):
                    tag = f"split_long{cfg.label_noise['split_long']:g}"
                    cells += [Cell("rtdetr", tag, spec["name"], n, s, fold) for s in cfg.seeds for n in ns(spec)]
                units.append(Unit(fold, setting, spec, cells))
    if cfg.leave_out:
        data = f"without_{cfg.leave_out['defect_type']}"
        lo_tasks = [t for t in cfg.leave_out.get("tasks", cfg.tasks) if t in cfg.tasks]
        for fold in fold_ids(cfg):
            for spec in cfg.generators:
                if _allowed(spec, data, cfg.leave_out.get("generators")):
                    cells = [Cell(t, data, spec["name"], n, s, fold) for s in cfg.seeds for t in lo_tasks
                             for n in ns(spec)]
                    units.append(Unit(fold, data, spec, cells))
    if cfg.new_fabric:
        nf_tasks = [t for t in cfg.new_fabric.get("tasks", cfg.tasks) if t in cfg.tasks and t != OPENSET]
        for target in new_fabric_targets(cfg):
            data = f"{NEW_FABRIC}{target}"
            for spec in cfg.generators:
                if _allowed(spec, data, cfg.new_fabric.get("generators")):
                    units.append(Unit(0, data, spec, [Cell(t, data, spec["name"], n, s, 0) for s in cfg.seeds
                                                      for t in nf_tasks for n in ns(spec)]))
    return units
