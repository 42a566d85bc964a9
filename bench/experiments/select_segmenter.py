"""Choose the segmenter's architecture and budget on the dev TRAINING part only (never the held-out split).

The benchmark's held-out evaluation split (30 % of sources, ``eval_split_seed`` 1234) is set
aside; each seed's pool is split train/val as the benchmark does, every variant trains on the
train part (real only) and is scored on the val part: pixel AP over fabric, macro per-type AP,
tile AUROC, and the seconds it took on this machine. Resumable: one JSON per (variant, seed).

    OMP_NUM_THREADS=1 python -m bench.experiments.select_segmenter --seeds 0 1 \\
        --out bench/results/segmenter_selection
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

VARIANTS = {
    "unet_scratch_400": {"arch": "unet", "steps": 400},
    "unet_lite0_frozen_1000": {"arch": "unet_lite0", "steps": 1000},
    "fpn_lite0_frozen_1000": {"arch": "fpn_lite0", "steps": 1000},
    "deeplabv3plus_lite0_frozen_1000": {"arch": "deeplabv3plus_lite0", "steps": 1000},
    "unet_lite0_last2_1000": {"arch": "unet_lite0", "steps": 1000, "trainable_stages": 2},
    "unet_lite0_frozen_2000": {"arch": "unet_lite0", "steps": 2000},
    # 2x zoom: 64 px crops fed at 128 px (finer features per source pixel, same cost per step)
    "unet_lite0_zoom2_frozen_1000": {"arch": "unet_lite0", "steps": 1000, "crop": 64},
    "unet_lite0_zoom2_last2_1000": {"arch": "unet_lite0", "steps": 1000, "crop": 64, "trainable_stages": 2},
    "unet_lite0_dec64_frozen_1000": {"arch": "unet_lite0", "steps": 1000, "decoder_channels": 64},
    "unet_lite0_lr3e-3_frozen_1000": {"arch": "unet_lite0", "steps": 1000, "lr": 3e-3},
    "unet_lite0_pw5_last2_1000": {"arch": "unet_lite0", "steps": 1000, "pos_weight": 5.0, "trainable_stages": 2},
    "unet_lite0_last4_1000": {"arch": "unet_lite0", "steps": 1000, "trainable_stages": 4},
}
COMMON = {"size": 128, "crop": 128, "batch_size": 8, "log_every": 100, "synthetic_fraction": None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "aitex"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "segmenter_selection"))
    p.add_argument("--work", default=str(REPO / "runs" / "select_segmenter"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from defectfill.benchmark.runner import MAIN, BenchmarkConfig, Context, materialize
    from defectfill.downstream.segmenter import SegmenterConfig, eval_tiles_for, evaluate_segmenter, train_segmenter
    from defectfill.downstream.tiles import images_from_reference

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    ctx = Context(BenchmarkConfig(data_dir=args.data, output_dir=args.work), Path(args.work))
    for seed in args.seeds:
        train_ids, val_ids = ctx.split(seed, MAIN)
        pool_dir = materialize(ctx.data, train_ids | val_ids, Path(args.work) / f"s{seed}" / "pool")
        pool = images_from_reference(pool_dir, 1)
        train = [im for im in pool if im.source_id in train_ids]
        val = [im for im in pool if im.source_id in val_ids]
        groups = [ctx.types.get(im.id, "good") for im in val]
        for name in args.variants:
            path = out / "runs" / f"{name}-s{seed}.json"
            if path.is_file():
                continue
            cfg = SegmenterConfig(**{**COMMON, **VARIANTS[name], "seed": seed}).validate()
            t0 = time.perf_counter()
            model, log = train_segmenter(cfg, train)
            train_s = time.perf_counter() - t0
            metrics = evaluate_segmenter(model, eval_tiles_for(cfg, val), batch_size=16, groups=groups)
            record = {"variant": name, "seed": seed, "config": asdict(cfg), "train_seconds": train_s,
                      "eval_seconds": metrics["seconds"], "train_images": len(train), "val_images": len(val),
                      "loss_history": log["history"], "metrics": metrics}
            path.write_text(json.dumps(record, indent=2, default=str))
            print(f"{name} s{seed}: pixel AP {metrics['pixel_ap']:.4f} macro {metrics['pixel_ap_macro']:.4f} "
                  f"AUROC {metrics['tile_auroc']:.3f} ({train_s:.0f} s)", flush=True)
    write_table(out)
    return 0


def write_table(out: Path) -> None:
    recs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    by: dict[str, list] = {}
    for r in recs:
        by.setdefault(r["variant"], []).append(r)
    lines = ["# Segmenter selection on the dev training part (val split of each seed's pool, real only)", "",
             "| variant | seeds | pixel AP (fabric) | macro per-type AP | pixel AP (all pixels) | tile AUROC | "
             "train s | eval s |", "|---|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        def col(f):
            v = [f(r["metrics"]) for r in rs]
            return f"{np.mean(v):.4f}" + (f" ± {np.std(v):.4f}" if len(v) > 1 else "")
        lines.append(f"| {name} | {len(rs)} | {col(lambda m: m['pixel_ap'])} | {col(lambda m: m['pixel_ap_macro'])} "
                     f"| {col(lambda m: m['all_pixels']['pixel_ap'])} | {col(lambda m: m['tile_auroc'])} "
                     f"| {np.mean([r['train_seconds'] for r in rs]):.0f} | {np.mean([r['eval_seconds'] for r in rs]):.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
