"""The benchmark profile: a YAML file mapped onto :class:`BenchmarkConfig` (``load_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from defectfill.benchmark.executors import executor_config
from defectfill.config import load_config
from defectfill.errors import ConfigError
from defectfill.generators import import_class

REAL_ONLY = "real_only"
MAIN = "main"
NEW_FABRIC = "new_"  # setting prefix of the new-fabric protocol: new_<fabric type>
FEW_SHOT = "fewshot"  # setting prefix of the few-shot protocol: fewshot<k> (k real defects per type)
ALL = "all"
TASKS = ("segmenter", "rtdetr", "openset")
OPENSET = "openset"  # DFC open-set classification: only in the leave_out setting (the left-out type is the unknown)
# class_path + init_args: the generator registry's YAML names
GENERATOR_KEYS = frozenset({"name", "class_path", "init_args", "generate", "counts", "settings", "downstream"})
RENAMED_GENERATOR_KEYS = {"kind": "class_path", "fit": "init_args"}  # old spellings: a ConfigError naming the new
# a generator's ``downstream`` overrides these task settings for its own cells (e.g. synthetic pretraining)
DOWNSTREAM_KEYS = ("segmenter", "detector")
NEW_FABRIC_KEYS = frozenset({"targets", "generators", "tasks", "min_defects", "eval_good_fraction"})


def _int_list(values, key: str, minimum: int | None = 1) -> list[int]:
    """``values`` as a list of integers (>= ``minimum``); ConfigError naming ``key`` otherwise."""
    values = values if isinstance(values, list) else [values]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            need = "integers" if minimum is None else ("positive integers" if minimum == 1 else f"integers >= {minimum}")
            raise ConfigError(f"{key}: must be {need}, got {values}")
    return values


def normalise_spec(g: dict) -> dict:
    """A generator entry in its one form: ``class_path`` (default: the name) and ``init_args``. The old
    spellings ``kind`` / ``fit`` are a ConfigError naming these. The class must import (``real_only``: no
    generator)."""
    renamed = [k for k in RENAMED_GENERATOR_KEYS if k in g]
    if renamed:
        raise ConfigError(f"generator {g['name']!r}: {' and '.join(renamed)} is no longer read: write "
                          f"{' and '.join(RENAMED_GENERATOR_KEYS[k] for k in renamed)} instead (a generator is "
                          f"class_path: <alias or package.module:Class> + init_args: {{its keys}})")
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


@dataclass
class BenchmarkConfig:
    """A benchmark profile (YAML via ``load_config``).

    Evaluation data, one of three protocols:
    - ``folds: K`` (K >= 2, default 5): cross-validation by source over the whole ``data_dir``;
      every source image is evaluated in exactly one fold (stratified by defect type and fabric);
    - ``folds: 1``: one held-out split (``eval_fraction``, ``eval_split_seed``);
    - ``eval_data`` (``--eval-data-dir DIR``): ``data_dir`` all trains, DIR is the evaluation set.
    """

    data_dir: str = "../shared/data/aitex"
    eval_data: str | None = None  # separate folder, ONLY for final evaluation
    folds: int = 5
    eval_fraction: float = 0.3  # folds: 1 only
    eval_split_seed: int = 1234  # folds and held-out split; the same for every seed (paired comparisons)
    val_fraction: float = 0.25  # of the training side: segmenter threshold and RT-DETR's val split; 0 = none
    max_images: int | None = None  # keep the first N defect and first N good images (by id) of data_dir
    output_dir: str = "runs/benchmark"
    tasks: list = field(default_factory=lambda: ["segmenter"])
    generators: list = field(default_factory=lambda: [{"name": REAL_ONLY, "class_path": REAL_ONLY}])
    synthetic_counts: list = field(default_factory=lambda: [4])  # a generator's own `counts` overrides it
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    # few-shot axis: real defect images per defect type the setting may see ("all": the main setting)
    real_per_type: list = field(default_factory=lambda: [ALL])
    threads: int | None = 1  # torch threads per cell (results depend on it; recorded per cell)
    segmenter: dict = field(default_factory=dict)  # SegmenterConfig overrides, the same for every cell
    detector: dict = field(default_factory=dict)  # DetectorConfig overrides + steps (+ eval_good_tiles_per_image)
    generate: dict = field(default_factory=dict)  # GenerateConfig overrides for every generator
    metrics: dict = field(default_factory=dict)  # generation_metrics keywords (crop, features, ...)
    generation_metrics: bool = True  # false: skip the Fréchet/KID/IC-LPIPS and boundary columns (saves ~1 min a unit)
    boundary: dict = field(default_factory=dict)  # boundary_realism keywords (crop, per_image)
    openset: dict = field(default_factory=dict)  # DFCConfig overrides (the open-set task's classifier)
    stats: dict = field(default_factory=dict)  # {n_boot: 2000, alpha: 0.05, compare: {defectfill: [copy_paste, ...]}}
    label_noise: dict | None = None  # {split_long: 4.0, generators: [real_only, ...]} (RT-DETR only)
    leave_out: dict | None = None  # {defect_type: nep, generators: [...], tasks: [...]}
    # new-fabric protocol: {targets: all | [fabric_02, ...], min_defects: 3, eval_good_fraction: 0.5,
    # generators: [...], tasks: [...]}
    new_fabric: dict | None = None
    gallery_rows: int = 6
    device: str = "cpu"
    # where units run (never what they compute): {kind: local} or {kind: ray, address: auto, num_gpus: 1}
    executor: dict = field(default_factory=dict)

    def task_settings(self, key: str, generator: str) -> dict:
        """The ``segmenter`` or ``detector`` settings of ``generator``'s cells: the grid's, updated by the
        generator's ``downstream.<key>`` (e.g. ``{synthetic_phase: 0.5}``: synthetic pretraining, then real
        fine-tuning, at the grid's total budget)."""
        spec = next((g for g in self.generators if g["name"] == generator), {})
        return {**getattr(self, key), **((spec.get("downstream") or {}).get(key) or {})}

    def few_shot_settings(self) -> list[int]:
        """The few-shot sizes of the ``real_per_type`` axis (``all`` is the main setting)."""
        return sorted({int(k) for k in self.real_per_type if k != ALL})

    def validate(self) -> None:
        _int_list(self.seeds, "seeds", minimum=None)
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 1:
            raise ConfigError(f"folds: must be an integer >= 1 (1: one held-out split), got {self.folds!r}")
        cv = self.folds >= 2 and not self.eval_data
        if len(self.seeds) < (2 if cv else 3):
            raise ConfigError(f"seeds: need at least {2 if cv else 3} seeds "
                              f"({'with' if cv else 'without'} cross-validation folds), got {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: repeated seed in {self.seeds}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads: must be a positive integer or null, got {self.threads!r}")
        self.real_per_type = self.real_per_type if isinstance(self.real_per_type, list) else [self.real_per_type]
        if not self.real_per_type or any(k != ALL and (isinstance(k, bool) or not isinstance(k, int) or k < 1)
                                         for k in self.real_per_type):
            raise ConfigError(f"real_per_type: need positive integers and/or 'all', got {self.real_per_type}")
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
            unknown = sorted(set(g) - GENERATOR_KEYS - set(RENAMED_GENERATOR_KEYS))  # renamed: normalise_spec says
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
            for key in ("init_args", "generate", "downstream"):
                if g.get(key) is not None and not isinstance(g[key], dict):
                    raise ConfigError(f"generator {g['name']!r}: {key} must be a mapping, got {g[key]!r}")
            for key, value in (g.get("downstream") or {}).items():
                if key not in DOWNSTREAM_KEYS or not isinstance(value, dict):
                    raise ConfigError(f"generator {g['name']!r}: downstream.{key}: need a mapping under one of "
                                      f"{', '.join(DOWNSTREAM_KEYS)}, got {value!r}")
            if "settings" in g and (not isinstance(g["settings"], list)
                                    or not all(isinstance(s, str) for s in g["settings"])):
                raise ConfigError(f"generator {g['name']!r}: settings must be a list of setting names "
                                  f"(main, fewshot<k>, new_fabric), got {g['settings']!r}")
            names.add(g["name"])
        if REAL_ONLY not in names:
            self.generators = [{"name": REAL_ONLY, "class_path": REAL_ONLY, "init_args": {}}, *self.generators]
            names.add(REAL_ONLY)
        if not 0 <= self.val_fraction < 1 or not 0 < self.eval_fraction < 1:
            raise ConfigError("val_fraction must be in [0, 1) and eval_fraction in (0, 1)")
        if self.val_fraction == 0 and "rtdetr" in self.tasks:
            raise ConfigError("val_fraction: 0 (no val split) works for the segmenter only; rtdetr needs its val split")
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
            unknown = sorted(set(self.new_fabric) - NEW_FABRIC_KEYS)
            if unknown:
                raise ConfigError(f"new_fabric: unknown key(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(sorted(NEW_FABRIC_KEYS))})")
            targets = self.new_fabric.get("targets", ALL)
            if targets != ALL and (not isinstance(targets, list) or not targets
                                   or not all(isinstance(t, str) and t for t in targets)):
                raise ConfigError(f"new_fabric.targets: need 'all' or a list of fabric types, got {targets!r}")
            unknown = set(self.new_fabric.get("generators", [])) - names
            if unknown:
                raise ConfigError(f"new_fabric.generators: {sorted(unknown)} are not in generators")
            bad_tasks = set(self.new_fabric.get("tasks", [])) - set(self.tasks)
            if bad_tasks:
                raise ConfigError(f"new_fabric.tasks: {sorted(bad_tasks)} are not in tasks")
            fraction = self.new_fabric.get("eval_good_fraction", 0.5)
            if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise ConfigError(f"new_fabric.eval_good_fraction must be in (0, 1), got {fraction!r}")
        executor_config(self.executor)
        if not isinstance(self.stats, dict):
            raise ConfigError(f"stats: must be a mapping, got {self.stats!r}")
        if not isinstance(self.stats.get("resample_seeds", True), bool):
            raise ConfigError(f"stats.resample_seeds must be true or false, got {self.stats['resample_seeds']!r}")
        for a, bs in (self.stats.get("compare") or {}).items():
            unknown = ({a} | set(bs)) - names
            if unknown:
                raise ConfigError(f"stats.compare: {sorted(unknown)} are not in generators")


def sub_config(cls, values: dict, key: str):
    """``cls`` from a sub-mapping of the benchmark config; a ConfigError names ``key``."""
    try:
        return load_config(cls, **values)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{key}: {msg.removeprefix('config: ')}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {' '.join(str(exc).split())}") from exc
