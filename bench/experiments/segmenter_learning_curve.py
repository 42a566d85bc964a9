"""Segmenter learning curve, real data only: pixel AP vs optimiser steps on held-out and training images.

One run of the benchmark's CPU segmenter (``configs/benchmark/aitex_cpu.yaml``'s settings, seed 0,
the main protocol's split) with a CONSTANT learning rate, evaluated at checkpoints on the held-out
evaluation images and on a fixed subset of its own training images (to tell under- from
over-fitting). A report, not a selection: no default is chosen from these numbers.

    OMP_NUM_THREADS=1 python -m bench.experiments.segmenter_learning_curve --out bench/results/segmenter_learning_curve

``--rank``: instead of the curve, whole benchmark cells (train + val threshold + evaluation) of the
profile's segmenter ("today") and of cheaper variants (``--cheap KEY=VALUE,...``, repeatable), each
trained on real only and on real + ``--count`` copy-paste samples, for every ``--seeds`` seed: does the
cheap cell rank real-only vs copy-paste as today's does, and what does a cell cost? Protocol of the
benchmark's main setting with ``folds: 1``: the profile's held-out split of ``data_dir`` by source
(eval_fraction, eval_split_seed) evaluates, the rest is split into train/val (val_fraction, seed
eval_split_seed + 1); copy-paste is fitted on train once and generates per seed onto train's good/
images with the profile's ``generate`` settings. Split and generation use defectfill.data.splits and
defectfill.generation.run directly (not the benchmark runner). Working copies of the data and samples go to
``--work`` (outside the repository); finished cells are cached there, so a rerun resumes.

    OMP_NUM_THREADS=1 python -m bench.experiments.segmenter_learning_curve --rank \
        --cheap size=64,trainable_stages=1,steps=300 --out bench/results/segmenter_cheap_cell
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=str(REPO / "configs" / "benchmark" / "aitex_cpu.yaml"))
    p.add_argument("--checkpoints", type=int, nargs="+", default=[150, 300, 600, 1200, 2400])
    p.add_argument("--train-eval-images", type=int, default=12, help="training defect images scored per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "segmenter_learning_curve"))
    p.add_argument("--work", default=None, help="working folder (default runs/segmenter_learning_curve; "
                   "with --rank /tmp/segmenter_rank_work)")
    p.add_argument("--rank", action="store_true", help="real-only vs copy-paste cells, today's segmenter vs --cheap")
    p.add_argument("--cheap", action="append", default=None, metavar="KEY=VALUE,...",
                   help="a cheaper variant: SegmenterConfig overrides of the profile's segmenter (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--count", type=int, default=40, help="copy-paste samples per cell (--rank)")
    p.add_argument("--data", default=None, help="reference data (default: the profile's data_dir)")
    args = p.parse_args(argv)
    if args.work is None:
        args.work = "/tmp/segmenter_rank_work" if args.rank else str(REPO / "runs" / "segmenter_learning_curve")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rank:
        return rank_main(args)
    import torch
    import torch.nn.functional as F

    from defectfill.benchmark.runner import MAIN, BenchmarkConfig, Context, materialize
    from defectfill.config import load_config
    from defectfill.downstream.segmenter import (
        SegmenterConfig,
        build_model,
        eval_tiles_for,
        evaluate_segmenter,
        train_tiles_for,
    )
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
    record = {"command": "OMP_NUM_THREADS=1 python -m bench.experiments.segmenter_learning_curve " + " ".join(sys.argv[1:]),
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


# ----------------------------------------------------------------------------- --rank


GENERATE_DEFAULTS = dict(candidates=2, num_inference_steps=2, dilation=6)  # as the benchmark's generator jobs


def parse_overrides(text: str) -> dict:
    """``"size=64,trainable_stages=1"`` -> {"size": 64, "trainable_stages": 1} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--cheap: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def copy_paste_samples(train_dir: Path, work: Path, count: int, seed: int, generate: dict, fit_seed: int = 0) -> Path:
    """Fit copy-paste on ``train_dir`` (once) and generate ``count`` samples with ``seed`` (once): the folder."""
    from defectfill.config import GenerateConfig
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.generation.run import run_generation
    from defectfill.generators import build_unfitted

    fit_dir, gen_dir = work / "copy_paste_fit", work / f"copy_paste_gen_s{seed}"
    done = fit_dir / "checkpoint.txt"
    if not done.is_file():
        ckpt = build_unfitted("copy_paste").fit(load_reference_dataset(train_dir), fit_dir, fit_seed)
        done.write_text(str(ckpt))
    if not (gen_dir / "done.json").is_file():
        t0 = time.perf_counter()
        summary = run_generation(GenerateConfig(
            generator="copy_paste", checkpoint=done.read_text(), clean_dir=str(train_dir / "good"), masks="auto",
            reference_dir=str(train_dir), num_samples=count, seed=seed, output_dir=str(gen_dir),
            **{**GENERATE_DEFAULTS, **generate}))
        (gen_dir / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "summary": summary},
                                                      default=str))
    return gen_dir


def rank_main(args) -> int:
    import torch
    import yaml

    from defectfill.benchmark.runner import materialize
    from defectfill.data.splits import defect_types, select_ids, split_ids
    from defectfill.downstream.segmenter import (
        SegmenterConfig,
        auroc,
        eval_tiles_for,
        evaluate_segmenter,
        train_segmenter,
    )
    from defectfill.downstream.tiles import images_from_reference, images_from_synthetic

    torch.set_num_threads(1)
    profile = yaml.safe_load(Path(args.profile).read_text())
    data = Path(args.data) if args.data else (REPO / profile["data_dir"]).resolve()
    work = Path(args.work)
    (work / "cells").mkdir(parents=True, exist_ok=True)
    variants = {"today": {}}
    for text in args.cheap or ["size=64,trainable_stages=1,steps=300"]:
        variants[text] = parse_overrides(text)
    configs = {name: SegmenterConfig(**{**profile["segmenter"], **over}).validate() for name, over in variants.items()}

    defect, good = select_ids(data)
    types = defect_types(data)
    split_seed = profile.get("eval_split_seed", 1234)
    held = split_ids(defect, good, types, profile.get("eval_fraction", 0.3), split_seed)
    rest_d, rest_g = [i for i in defect if i not in held], [g for g in good if g not in held]
    val_ids = split_ids(rest_d, rest_g, types, profile.get("val_fraction", 0.25), split_seed + 1)
    train_ids = (set(rest_d) | set(rest_g)) - val_ids
    train_dir = materialize(data, train_ids, work / "train")
    images = images_from_reference(data, 1)
    train = [im for im in images if im.id in train_ids]
    val = [im for im in images if im.id in val_ids]
    evals = [im for im in images if im.id in held]
    groups = [types.get(im.id, "good") for im in evals]
    protocol = {"data": str(data), "eval_ids": sorted(held), "val_ids": sorted(val_ids),
                "train_images": len(train), "train_defect_images": sum(im.has_defect for im in train),
                "val_images": len(val), "eval_images": len(evals), "eval_defect_images": sum(im.has_defect for im in evals),
                "eval_fraction": profile.get("eval_fraction", 0.3), "eval_split_seed": split_seed,
                "val_fraction": profile.get("val_fraction", 0.25), "count": args.count,
                "generate": {**GENERATE_DEFAULTS, **(profile.get("generate") or {})}}
    print(json.dumps({k: v for k, v in protocol.items() if not k.endswith("_ids")}), flush=True)
    eval_cache: dict = {}
    rows = []
    for seed in args.seeds:
        gen_dir = copy_paste_samples(train_dir, work, args.count, seed, profile.get("generate") or {})
        synthetic = images_from_synthetic(gen_dir, 1)[:args.count]
        for generator, extra in (("real_only", []), ("copy_paste", synthetic)):
            for name, base in configs.items():
                slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
                path = work / "cells" / f"{slug}-{generator}-s{seed}.json"
                if path.is_file() and json.loads(path.read_text())["config"] == asdict(
                        SegmenterConfig(**{**asdict(base), "seed": seed})):
                    rows.append(json.loads(path.read_text()))
                    continue
                cfg = SegmenterConfig(**{**asdict(base), "seed": seed})
                key = (cfg.crop, cfg.size, cfg.eval_on_fabric)
                if key not in eval_cache:  # the benchmark builds a fold's evaluation tiles once
                    eval_cache[key] = eval_tiles_for(cfg, evals)
                t0 = time.perf_counter()
                model, log = train_segmenter(cfg, [*train, *extra], val)
                ev = evaluate_segmenter(model, eval_cache[key], threshold=log["val_threshold"],
                                        batch_size=cfg.eval_batch_size, groups=groups, per_source=True)
                cell_s = time.perf_counter() - t0
                recs = ev.pop("per_source")
                image_auroc = auroc(torch.tensor([r["image_score"] for r in recs]),
                                    torch.tensor([r["type"] != "good" for r in recs]))
                row = {"variant": name, "overrides": variants[name], "generator": generator, "seed": seed,
                       "synthetic_used": len(extra), "synthetic_positive_crops": log["synthetic_positive_crops"],
                       "positive_crops": log["positive_crops"],
                       "pixel_ap": ev["pixel_ap"], "pixel_ap_macro": ev["pixel_ap_macro"],
                       "pixel_ap_all_pixels": ev["all_pixels"]["pixel_ap"], "tile_auroc": ev["tile_auroc"],
                       "image_auroc": image_auroc, "pixel_f1@threshold": ev.get("pixel_f1@threshold"),
                       "val_pixel_ap": log["val"]["pixel_ap"], "val_threshold": log["val_threshold"],
                       "pixel_ap_by_type": {t: v["ap"] for t, v in ev["pixel_ap_by_type"].items()},
                       "seconds": {"cell": cell_s, "train": log["seconds"], "val_eval": log["val"]["seconds"],
                                   "eval": ev["seconds"], "per_step": log["seconds_per_step"],
                                   "eval_per_image": ev["seconds"] / len(evals),
                                   "val_eval_per_image": log["val"]["seconds"] / len(val)},
                       "config": asdict(cfg)}
                path.write_text(json.dumps(row, indent=2, default=str))
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("variant", "generator", "seed", "pixel_ap", "pixel_ap_macro",
                                                        "image_auroc")} | {"cell_s": round(cell_s, 1)}), flush=True)
                write_rank(Path(args.out), args, protocol, configs, rows)
    write_rank(Path(args.out), args, protocol, configs, rows)
    return 0


def _mean_std(values) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.size > 1 else (f"{v.mean():.4f}" if v.size else "–")


def rank_summary(rows: list[dict], variants) -> dict:
    """Per variant: per-seed real-only / copy-paste metrics, paired Δ, and mean seconds per cell."""
    import numpy as np

    out = {}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        seeds = sorted({r["seed"] for r in mine})
        per_seed = {}
        for seed in seeds:
            by = {r["generator"]: r for r in mine if r["seed"] == seed}
            if {"real_only", "copy_paste"} <= set(by):
                per_seed[seed] = {m: {"real_only": by["real_only"][m], "copy_paste": by["copy_paste"][m],
                                      "delta": by["copy_paste"][m] - by["real_only"][m]}
                                  for m in ("pixel_ap", "pixel_ap_macro", "image_auroc", "tile_auroc")}
        secs = {k: float(np.mean([r["seconds"][k] for r in mine])) for k in
                ("cell", "train", "val_eval", "eval", "per_step", "eval_per_image")} if mine else {}
        out[name] = {"per_seed": per_seed, "seconds_mean": secs,
                     "delta_mean": {m: float(np.mean([v[m]["delta"] for v in per_seed.values()]))
                                    for m in ("pixel_ap", "pixel_ap_macro", "image_auroc", "tile_auroc")}
                     if per_seed else {}}
    return out


def write_rank(out: Path, args, protocol: dict, configs: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = rank_summary(rows, configs)
    command = "OMP_NUM_THREADS=1 python -m bench.experiments.segmenter_learning_curve " + " ".join(sys.argv[1:])
    record = {"command": command, "protocol": protocol, "configs": {k: asdict(v) for k, v in configs.items()},
              "summary": summary, "cells": rows, "torch_threads": 1}
    (out / "rank.json").write_text(json.dumps(record, indent=2, default=str))
    lines = ["# Cheap segmenter cell vs today's: real-only vs copy-paste, per seed", "",
             f"Command: `{command}`", "",
             f"Data: {protocol['data']}; evaluation = the held-out {protocol['eval_fraction']} by source (split seed "
             f"{protocol['eval_split_seed']}): {protocol['eval_images']} images ({protocol['eval_defect_images']} "
             f"defect); train {protocol['train_images']} ({protocol['train_defect_images']} defect), val "
             f"{protocol['val_images']} (threshold only). Copy-paste: {protocol['count']} samples per seed, "
             f"generate {protocol['generate']}. One torch thread, cells run one after another in one process.", ""]
    for name, cfg in configs.items():
        lines.append(f"- **{name}**: arch {cfg.arch}, trainable_stages {cfg.trainable_stages}, steps {cfg.steps}, "
                     f"crop {cfg.crop}, size {cfg.size}, batch {cfg.batch_size}, decoder_channels "
                     f"{cfg.decoder_channels}, synthetic_fraction {cfg.synthetic_fraction}")
    for metric in ("pixel_ap", "pixel_ap_macro", "image_auroc"):
        lines += ["", f"## {metric}: copy_paste − real_only per seed", "",
                  "| variant | seed | real_only | copy_paste | Δ |", "|---|---|---|---|---|"]
        for name, s in summary.items():
            for seed, v in s["per_seed"].items():
                m = v[metric]
                lines.append(f"| {name} | {seed} | {m['real_only']:.4f} | {m['copy_paste']:.4f} | "
                             f"{m['delta']:+.4f} |")
            ds = [v[metric]["delta"] for v in s["per_seed"].values()]
            if ds:
                lines.append(f"| {name} | mean ± std | {_mean_std([v[metric]['real_only'] for v in s['per_seed'].values()])} "
                             f"| {_mean_std([v[metric]['copy_paste'] for v in s['per_seed'].values()])} | "
                             f"{_mean_std(ds)} ({sum(d > 0 for d in ds)}/{len(ds)} > 0) |")
    lines += ["", "## Seconds per cell (mean over its cells; same process, same machine)", "",
              "| variant | cells | cell s | train s | s/step | val eval s | eval s | eval s/image |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        n = sum(r["variant"] == name for r in rows)
        t = s["seconds_mean"]
        if t:
            lines.append(f"| {name} | {n} | {t['cell']:.1f} | {t['train']:.1f} | {t['per_step']:.3f} | "
                         f"{t['val_eval']:.1f} | {t['eval']:.1f} | {t['eval_per_image']:.2f} |")
    (out / "rank.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
