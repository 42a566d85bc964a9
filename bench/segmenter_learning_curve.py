"""Segmenter learning curve, real data only: pixel AP vs optimiser steps on held-out and training images.

One run of the benchmark's CPU segmenter (``configs/benchmark/aitex_cpu.yaml``'s settings, seed 0,
the main protocol's split) with a CONSTANT learning rate, evaluated at checkpoints on the held-out
evaluation images and on a fixed subset of its own training images (to tell under- from
over-fitting). A report, not a selection: no default is chosen from these numbers.

    OMP_NUM_THREADS=1 python bench/segmenter_learning_curve.py --out bench/results/segmenter_learning_curve
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=str(REPO / "configs" / "benchmark" / "aitex_cpu.yaml"))
    p.add_argument("--checkpoints", type=int, nargs="+", default=[150, 300, 600, 1200, 2400])
    p.add_argument("--train-eval-images", type=int, default=12, help="training defect images scored per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "segmenter_learning_curve"))
    p.add_argument("--work", default=str(REPO / "runs" / "segmenter_learning_curve"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F

    from defectfill.benchmark.runner import MAIN, BenchmarkConfig, Context, materialize
    from defectfill.config import load_config
    from defectfill.downstream.segmenter import (SegmenterConfig, build_model, eval_tiles_for, evaluate_segmenter,
                                                 train_tiles_for)
    from defectfill.downstream.tiles import images_from_reference

    torch.set_num_threads(1)
    bench = load_config(BenchmarkConfig, args.profile, output_dir=args.work)
    ctx = Context(bench, Path(args.work))
    cfg = SegmenterConfig(**{**bench.segmenter, "seed": args.seed, "schedule": "constant",
                             "steps": max(args.checkpoints)}).validate()
    train_ids, val_ids = ctx.split(args.seed, MAIN)
    pool = images_from_reference(materialize(ctx.data, train_ids | val_ids, Path(args.work) / "pool"), 1)
    train = [im for im in pool if im.source_id in train_ids]
    train_scored = [im for im in train if im.has_defect][:args.train_eval_images]
    eval_tiles, eval_groups = ctx.eval_tiles(MAIN)["all"]
    train_tiles = eval_tiles_for(cfg, train_scored)
    train_groups = [ctx.types.get(im.id, "defect") for im in train_scored]

    tiles = train_tiles_for(cfg, train)
    model = build_model(cfg).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    pos_weight = torch.tensor([cfg.pos_weight])
    rows, start, losses = [], time.perf_counter(), []
    for step in range(cfg.steps):
        batch = tiles.batch(step, cfg.batch_size)
        loss = F.binary_cross_entropy_with_logits(model(batch["images"]), batch["masks"], pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step + 1 in args.checkpoints:
            train_s = time.perf_counter() - start
            held = evaluate_segmenter(model, eval_tiles, groups=eval_groups)
            own = evaluate_segmenter(model, train_tiles, groups=train_groups)
            model.train()
            rows.append({"step": step + 1, "train_seconds": train_s, "loss": sum(losses) / len(losses),
                         "held_out": {k: held[k] for k in ("pixel_ap", "pixel_ap_macro", "tile_auroc")},
                         "held_out_all_pixels_ap": held["all_pixels"]["pixel_ap"],
                         "held_out_by_type": {t: v["ap"] for t, v in held["pixel_ap_by_type"].items()},
                         "train": {k: own[k] for k in ("pixel_ap", "pixel_ap_macro", "tile_auroc")}})
            losses = []
            print(json.dumps(rows[-1]), flush=True)
            write(Path(args.out), args, cfg, rows, len(train), len(train_scored))
            start = time.perf_counter() - train_s  # evaluation time is not training time
    return 0


def write(out: Path, args, cfg, rows, n_train, n_scored) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": "OMP_NUM_THREADS=1 python bench/segmenter_learning_curve.py " + " ".join(sys.argv[1:]),
              "config": asdict(cfg), "train_images": n_train, "train_images_scored": n_scored, "rows": rows}
    (out / "curve.json").write_text(json.dumps(record, indent=2))
    lines = ["# Segmenter learning curve (real only, seed 0, main protocol, constant lr)", "",
             f"Command: `{record['command']}`", "",
             f"Segmenter: {cfg.arch}, encoder {cfg.encoder_weights}, last {cfg.trainable_stages} stages trained, "
             f"lr {cfg.lr} constant, batch {cfg.batch_size}, {cfg.crop} px crops. Held-out = the benchmark's "
             f"evaluation split (fabric pixels); train = {n_scored} of its {n_train} training images (defect ones).",
             "", "| steps | train s | mean loss since last | held-out pixel AP | held-out macro AP | held-out AP all "
             "pixels | held-out tile AUROC | train pixel AP | train macro AP |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, t = r["held_out"], r["train"]
        lines.append(f"| {r['step']} | {r['train_seconds']:.0f} | {r['loss']:.3f} | {h['pixel_ap']:.4f} | "
                     f"{h['pixel_ap_macro']:.4f} | {r['held_out_all_pixels_ap']:.4f} | {h['tile_auroc']:.3f} | "
                     f"{t['pixel_ap']:.4f} | {t['pixel_ap_macro']:.4f} |")
    (out / "curve.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
