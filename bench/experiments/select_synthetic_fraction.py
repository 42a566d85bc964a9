"""Choose the segmenter's ``synthetic_fraction`` on the TRAINING part of the dev split only.

For every seed of a finished benchmark profile, the segmenter is trained on that seed's train split
plus one generator's first ``count`` samples at each candidate fraction, and scored on the seed's
VAL split (part of the benchmark's pool: the held-out evaluation images are never read). The
paired Δ val pixel AP against the real-only cell of the same seed picks the default.

    for f in 0.15 0.5; do OMP_NUM_THREADS=1 python -m bench.experiments.select_synthetic_fraction \\
        --config configs/benchmark/aitex_cpu_segmenter.yaml --fractions $f & done; wait
    python -m bench.experiments.select_synthetic_fraction --config configs/benchmark/aitex_cpu_segmenter.yaml --report-only

Cells the benchmark already ran (real-only, and the profile's own fraction) are reused from its
``cells/`` folder; new ones are cached in ``<output_dir>/select_fraction/``. Writes
bench/results/synthetic_fraction.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True,
                   help="the benchmark profile whose run folder holds the splits and samples")
    p.add_argument("--generator", default="copy_paste")
    p.add_argument("--count", type=int, default=None, help="synthetic samples per cell (default: the largest count)")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.15, 0.5])
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def val_pixel_ap(cell: Path) -> float | None:
    path = cell / "result.json"
    return json.loads(path.read_text())["val"]["pixel_ap"] if path.is_file() else None


def run_cell(ctx, seed: int, generator: str, count: int, fraction: float, cache: Path) -> float:
    """Val pixel AP of the segmenter trained on seed's train split + ``count`` samples at ``fraction``."""
    from defectfill.benchmark.runner import MAIN
    from defectfill.downstream.segmenter import SegmenterConfig, train_segmenter
    from defectfill.downstream.tiles import images_from_reference, images_from_synthetic
    from defectfill.runinfo import atomic_write_text

    path = cache / f"{generator}-n{count}-f{fraction:g}-s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())["val"]["pixel_ap"]
    base = ctx.out / "work" / f"s{seed}" / MAIN
    train_ids, val_ids = ctx.split(seed, MAIN)
    pool = images_from_reference(base / "pool", ctx.seg.in_channels)
    train = [im for im in pool if im.source_id in train_ids]
    val = [im for im in pool if im.source_id in val_ids]
    synthetic = images_from_synthetic(base / generator / "gen", ctx.seg.in_channels)[:count]
    cfg = SegmenterConfig(**{**asdict(ctx.seg), "seed": seed, "synthetic_fraction": fraction})
    _, log = train_segmenter(cfg, [*train, *synthetic], val)
    record = {"seed": seed, "generator": generator, "count": count, "synthetic_fraction": fraction,
              "val": log["val"], "val_images": len(val), "synthetic_positive_crops": log["synthetic_positive_crops"],
              "positive_crops": log["positive_crops"]}
    atomic_write_text(path, json.dumps(record, indent=2, default=str))
    return log["val"]["pixel_ap"]


def main(args) -> int:
    from defectfill.benchmark.runner import BenchmarkConfig, Context
    from defectfill.config import load_config
    from defectfill.runinfo import atomic_write_text, package_versions

    cfg = load_config(BenchmarkConfig, args.config)
    cfg.validate()
    out = Path(cfg.output_dir)
    count = args.count or max(int(c) for c in cfg.synthetic_counts)
    own = cfg.segmenter.get("synthetic_fraction", 0.3)
    cache = out / "select_fraction"
    cache.mkdir(parents=True, exist_ok=True)
    ctx = None if args.report_only else Context(cfg, out)
    for seed in cfg.seeds:
        for f in args.fractions:
            if ctx is not None and f != own:
                ap = run_cell(ctx, seed, args.generator, count, f, cache)
                print(f"seed {seed} fraction {f:g}: val pixel AP {ap:.4f}", file=sys.stderr, flush=True)
    table: dict[str, dict] = {}
    for f in sorted({own, *args.fractions, *(json.loads(p.read_text())["synthetic_fraction"]
                                            for p in cache.glob(f"{args.generator}-n{count}-*.json"))}):
        deltas = {}
        for seed in cfg.seeds:
            real = val_pixel_ap(out / "cells" / f"segmenter-main-real_only-n0-s{seed}")
            if f == own:
                ap = val_pixel_ap(out / "cells" / f"segmenter-main-{args.generator}-n{count}-s{seed}")
            else:
                p = cache / f"{args.generator}-n{count}-f{f:g}-s{seed}.json"
                ap = json.loads(p.read_text())["val"]["pixel_ap"] if p.is_file() else None
            if real is not None and ap is not None:
                deltas[seed] = ap - real
        if deltas:
            v = np.array(list(deltas.values()))
            table[f"{f:g}"] = {"synthetic_fraction": f, "seeds": sorted(deltas),
                               "delta_val_pixel_ap_mean": float(v.mean()),
                               "delta_val_pixel_ap_std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                               "per_seed": {str(k): d for k, d in deltas.items()}}
    full = {k: r for k, r in table.items() if len(r["seeds"]) == len(cfg.seeds)}
    chosen = max(full.values(), key=lambda r: r["delta_val_pixel_ap_mean"])["synthetic_fraction"] if full else None
    report = {"what": "segmenter synthetic_fraction chosen on the dev split's training part (per-seed val split)",
              "config": args.config, "generator": args.generator, "count": count, "table": table, "chosen": chosen,
              "command": " ".join(["python", "bench/experiments/select_synthetic_fraction.py", *sys.argv[1:]]),
              "versions": package_versions()}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "synthetic_fraction.json", json.dumps(report, indent=2, default=str))
    lines = ["# Segmenter `synthetic_fraction`, chosen on the training part of the dev split", "",
             f"Profile `{args.config}`, generator `{args.generator}`, {count} samples per cell. Δ = val pixel AP − "
             "real-only val pixel AP of the same seed (val = each seed's val split of the pool; the held-out "
             "evaluation images are not used).", "",
             "| synthetic_fraction | seeds | Δ val pixel AP (mean ± std) | per seed |", "|---|---|---|---|"]
    for r in table.values():
        per = ", ".join(f"{d:+.4f}" for d in r["per_seed"].values())
        lines.append(f"| {r['synthetic_fraction']:g} | {len(r['seeds'])} | {r['delta_val_pixel_ap_mean']:+.4f} ± "
                     f"{r['delta_val_pixel_ap_std']:.4f} | {per} |")
    lines += ["", f"Chosen: **{chosen}**" if chosen is not None else "Chosen: (incomplete)"]
    atomic_write_text(RESULTS / "synthetic_fraction.md", "\n".join(lines) + "\n")
    print(json.dumps({"chosen": chosen, "table": {k: r["delta_val_pixel_ap_mean"] for k, r in table.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
