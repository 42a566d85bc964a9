"""Benchmark runner: (generator x synthetic count x seed) cells, each a segmenter trained at the same step budget.

Protocol per seed ``s``:

1. The *evaluation* images are either ``eval_data`` (a separate folder, used only for final
   evaluation) or a fixed held-out fraction of ``data_dir`` (``split_by_source`` with
   ``eval_split_seed``, the same for every seed so the comparison is paired).
2. The remaining training pool is split by source into train/val (seed ``s``); val only picks
   the segmenter's F1 threshold (``val_threshold``), never evaluation data.
3. The train part is written to ``work/s<seed>/train_data`` (images/, masks/, good/, manifest).
   Each generator is fitted once on it, then generates ``max(synthetic_counts)`` samples onto
   the train part's ``good/`` images with auto masks from the train part; a cell with count ``n``
   uses the first ``n`` samples (slots are deterministic per index).
4. The segmenter (same ``SegmenterConfig`` and seed ``s`` for every cell) trains on real train
   images (+ synthetic) and is evaluated on the evaluation images. ``real_only`` uses no synthetic data.

Every cell writes ``cells/<generator>-n<count>-s<seed>/result.json`` atomically and is skipped
when it exists. Fit+generate wall time and peak-RSS growth (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` after minus before, KiB on Linux; it is a process high-water mark, so growth is 0
when a stage stays under an earlier peak) are recorded per generator and seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from defectfill.config import load_config
from defectfill.errors import ConfigError, DefectfillError
from defectfill.runinfo import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
REAL_ONLY = "real_only"
KINDS = ("real_only", "defectfill", "copy_paste", "multistage", "dgt")
GAN_DEFAULTS = dict(max_steps=2, batch_size=2, checkpointing_steps=100, sample_every=100, log_every=1)
GENERATE_DEFAULTS = dict(candidates=2, num_inference_steps=2, min_change=0.0, dilation=6)


@dataclass
class BenchmarkConfig:
    """A benchmark profile (YAML via ``load_config``)."""

    data_dir: str = "../shared/data/aitex"
    eval_data: str | None = None  # separate folder, ONLY for final evaluation; None: hold out from data_dir
    eval_fraction: float = 0.3  # held-out fraction of sources when eval_data is None
    eval_split_seed: int = 1234  # the held-out split is the same for every seed
    val_fraction: float = 0.25  # of the training pool, for the segmenter's threshold only
    max_images: int | None = None  # keep the first N defect and first N good images (by id) of data_dir
    output_dir: str = "runs/benchmark"
    generators: list = field(default_factory=lambda: [{"name": REAL_ONLY, "kind": REAL_ONLY}])
    synthetic_counts: list = field(default_factory=lambda: [4])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    segmenter: dict = field(default_factory=dict)  # SegmenterConfig overrides, the same for every cell
    generate: dict = field(default_factory=dict)  # GenerateConfig overrides for every generator
    model: str = "runs/tiny-sd2-inpainting"  # base model for defectfill; tiny one is made if missing
    device: str = "cpu"

    def validate(self) -> None:
        if len(self.seeds) < 3:
            raise ConfigError(f"seeds: need at least 3 seeds, got {self.seeds}")
        if not self.synthetic_counts or any(int(c) < 1 for c in self.synthetic_counts):
            raise ConfigError(f"synthetic_counts must be positive integers, got {self.synthetic_counts}")
        names = set()
        for g in self.generators:
            if not isinstance(g, dict) or "name" not in g:
                raise ConfigError(f"generators: each entry needs a name, got {g!r}")
            kind = g.get("kind", g["name"])
            if kind not in KINDS:
                raise ConfigError(f"generator {g['name']!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
            if g["name"] in names:
                raise ConfigError(f"generator name {g['name']!r} repeated")
            names.add(g["name"])
        if REAL_ONLY not in names:
            self.generators = [{"name": REAL_ONLY, "kind": REAL_ONLY}, *self.generators]
        if not 0 < self.val_fraction < 1 or not 0 < self.eval_fraction < 1:
            raise ConfigError("val_fraction and eval_fraction must be in (0, 1)")


# ----------------------------------------------------------------------------- data


def _select_ids(root: Path, max_images: int | None) -> tuple[list[str], list[str]]:
    defect = sorted(p.stem for p in (root / "images").iterdir() if p.is_file())
    good = sorted(p.stem for p in (root / "good").iterdir() if p.is_file()) if (root / "good").is_dir() else []
    if max_images:
        defect, good = defect[:max_images], good[:max_images]
    return defect, good


def _load_pool(root: Path, max_images: int | None, channels: int):
    from defectfill.downstream.tiles import images_from_reference

    defect, good = _select_ids(root, max_images)
    keep = set(defect) | set(good)
    return [im for im in images_from_reference(root, channels) if im.source_id in keep]


def materialize(src: Path, ids: set[str], dest: Path) -> Path:
    """Copy the images/masks/good files of source ids ``ids`` (and their manifest rows) to ``dest``."""
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("images", "masks", "good"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        if (src / sub).is_dir():
            for p in (src / sub).iterdir():
                if p.is_file() and p.stem in ids:
                    shutil.copy2(p, dest / sub / p.name)
    manifest = src / "manifest.csv"
    if manifest.exists():
        with manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("id") in ids]
            fields = reader.fieldnames
        with (dest / "manifest.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    (dest / ".complete").write_text("ok\n")
    return dest


# ----------------------------------------------------------------------------- generators


def _ensure_model(cfg: BenchmarkConfig) -> str:
    path = Path(cfg.model)
    if not (path / "model_index.json").exists():
        from defectfill.models.tiny import make_tiny_pipeline

        make_tiny_pipeline(path)
    return str(path)


def fit_generator(cfg: BenchmarkConfig, spec: dict, train_dir: Path, out: Path, seed: int) -> Path:
    """Fit ``spec['kind']`` briefly on ``train_dir`` (as tests/test_generators_common.py); return its checkpoint."""
    kind, fit = spec.get("kind", spec["name"]), dict(spec.get("fit") or {})
    data = str(train_dir)
    if kind == "copy_paste":
        from gan_baselines.copy_paste import CopyPasteConfig, CopyPasteGenerator

        from defectfill.data.datasets import load_reference_dataset

        fit.pop("max_steps", None)
        return CopyPasteGenerator(CopyPasteConfig(data_dir=data, **fit)).fit(load_reference_dataset(data), out)
    if kind in ("dgt", "multistage"):
        if kind == "dgt":
            from gan_baselines.dgt.train import DGTConfig as C
            from gan_baselines.dgt.train import train
        else:
            from gan_baselines.multistage.train import MultistageConfig as C
            from gan_baselines.multistage.train import train
        yaml_path = fit.pop("config", REPO / "configs" / "gan" / f"{kind}_small.yaml")
        values = {**GAN_DEFAULTS, "seed": seed, **fit}
        return train(load_config(C, yaml_path, data_dir=data, output_dir=str(out), **values))
    if kind == "defectfill":
        from defectfill.config import DefectFillTrainConfig
        from defectfill.trainer import train

        yaml_path = fit.pop("config", REPO / "configs" / "defectfill" / "tiny.yaml")
        if "max_steps" in fit:
            fit["max_train_steps"] = fit.pop("max_steps")
        values = {"max_train_steps": 2, "checkpointing_steps": 100, "seed": seed, **fit}
        return train(load_config(DefectFillTrainConfig, yaml_path, model=_ensure_model(cfg), data_dir=data,
                                 output_dir=str(out), **values))
    raise ConfigError(f"generator kind {kind!r} cannot be fitted")


def generate_with(cfg: BenchmarkConfig, spec: dict, ckpt: Path, train_dir: Path, out: Path, count: int,
                  seed: int) -> dict:
    from defectfill.config import GenerateConfig
    from defectfill.generate import run_generation

    kind = spec.get("kind", spec["name"])
    values = {**GENERATE_DEFAULTS, **cfg.generate, **(spec.get("generate") or {})}
    gcfg = GenerateConfig(generator=kind, checkpoint=None if kind == "defectfill" else str(ckpt),
                          lora_dir=str(ckpt) if kind == "defectfill" else "", clean_dir=str(train_dir / "good"),
                          masks="auto", reference_dir=str(train_dir), num_samples=count, seed=seed,
                          output_dir=str(out), **values)
    return run_generation(gcfg)


# ----------------------------------------------------------------------------- runner


def cell_name(generator: str, count: int, seed: int) -> str:
    return f"{generator}-n{count}-s{seed}"


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Run every missing cell, then aggregate (``report.write_report``); return the report dict."""
    from defectfill.downstream.segmenter import (SegmenterConfig, eval_tiles_for, evaluate_segmenter,
                                                 train_segmenter)
    from defectfill.downstream.tiles import images_from_reference, images_from_synthetic, split_by_source

    from defectfill.benchmark.report import write_report

    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark_config.json", json.dumps(asdict(cfg), indent=2, default=str))
    seg_base = load_config(SegmenterConfig, **cfg.segmenter)
    data = Path(cfg.data_dir)
    counts = sorted({int(c) for c in cfg.synthetic_counts})
    specs = cfg.generators

    def planned(seed):
        cells = [(s, 0) for s in specs if s.get("kind", s["name"]) == REAL_ONLY]
        cells += [(s, n) for s in specs if s.get("kind", s["name"]) != REAL_ONLY for n in counts]
        return [(s, n, out / "cells" / cell_name(s["name"], n, seed) / "result.json") for s, n in cells]

    todo = {seed: [c for c in planned(seed) if not c[2].exists()] for seed in cfg.seeds}
    skipped = sum(len(planned(s)) - len(todo[s]) for s in cfg.seeds)
    ran = 0
    if any(todo.values()):
        channels = seg_base.in_channels
        if cfg.eval_data:
            pool = _load_pool(data, cfg.max_images, channels)
            eval_images = images_from_reference(cfg.eval_data, channels)
            eval_source = {"kind": "eval_data", "path": str(cfg.eval_data)}
        else:
            pool, eval_images = split_by_source(_load_pool(data, cfg.max_images, channels), cfg.eval_fraction,
                                                cfg.eval_split_seed)
            eval_source = {"kind": "held_out_split", "fraction": cfg.eval_fraction, "seed": cfg.eval_split_seed}
        eval_source["eval_ids"] = sorted({im.source_id for im in eval_images})
        eval_tiles = eval_tiles_for(seg_base, eval_images)
        for seed in cfg.seeds:
            if not todo[seed]:
                continue
            train_imgs, val_imgs = split_by_source(pool, cfg.val_fraction, seed)
            train_ids = {im.source_id for im in train_imgs}
            work = out / "work" / f"s{seed}"
            train_dir = materialize(data, train_ids, work / "train_data")
            seg_cfg = SegmenterConfig(**{**asdict(seg_base), "seed": seed})
            by_gen: dict[str, list] = {}
            for spec, n, path in todo[seed]:
                by_gen.setdefault(spec["name"], []).append((spec, n, path))
            for name, cells in by_gen.items():
                spec = cells[0][0]
                kind = spec.get("kind", name)
                gen_info, synth_root = {}, None
                if kind != REAL_ONLY:
                    rss0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
                    ckpt = fit_generator(cfg, spec, train_dir, work / "fit" / name, seed)
                    t1 = time.perf_counter()
                    synth_root = work / "gen" / name
                    summary = generate_with(cfg, spec, Path(ckpt), train_dir, synth_root, max(counts), seed)
                    t2 = time.perf_counter()
                    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    gen_info = {"fit_seconds": t1 - t0, "generate_seconds": t2 - t1,
                                "fit_generate_seconds": t2 - t0, "peak_rss_growth_kib": rss1 - rss0,
                                "peak_rss_kib": rss1, "rss_method": "getrusage(RUSAGE_SELF).ru_maxrss growth",
                                "checkpoint": str(ckpt), "generated_dir": str(synth_root),
                                "generated_samples": summary.get("samples")}
                    synthetic_all = images_from_synthetic(synth_root, channels)
                for spec_, n, path in cells:
                    synthetic = [] if synth_root is None else synthetic_all[:n]
                    t0 = time.perf_counter()
                    model, log = train_segmenter(seg_cfg, [*train_imgs, *synthetic], val_imgs)
                    metrics = evaluate_segmenter(model, eval_tiles, threshold=log.get("val_threshold"),
                                                 batch_size=seg_cfg.eval_batch_size)
                    result = {"generator": name, "kind": kind, "count": n, "seed": seed,
                              "synthetic_used": len(synthetic), "train_real_images": len(train_imgs),
                              "val_images": len(val_imgs), "eval_images": len(eval_images),
                              "eval_source": eval_source, "segmenter_steps": seg_cfg.steps,
                              "segmenter_config": asdict(seg_cfg), "segmenter_seconds": time.perf_counter() - t0,
                              "val_threshold": log.get("val_threshold"), "metrics": metrics, "generator_run": gen_info,
                              "sidecar_example": _first_sidecar(synth_root)}
                    atomic_write_text(path, json.dumps(result, indent=2, default=str))
                    ran += 1
    report = write_report(out)
    report["run"] = {"cells_run": ran, "cells_skipped": skipped}
    return report


def _first_sidecar(root: Path | None) -> str | None:
    if root is None:
        return None
    sides = sorted((root / "sidecars").glob("*.json"))
    return str(sides[0]) if sides else None


def benchmark_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="defectfill benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--eval-data", default=None)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(BenchmarkConfig, args.config, args.set, eval_data=args.eval_data, output_dir=args.output_dir)
        report = run_benchmark(cfg)
    except DefectfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"output_dir": cfg.output_dir, **report["run"], "rows": len(report["rows"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(benchmark_main())
