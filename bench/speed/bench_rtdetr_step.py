"""Seconds per RT-DETR training step on CPU, side by side: the old detector, the fast one, the fast one with
cached backbone features (warm cache: every image seen before).

One process, one torch thread, the variants interleaved over ``--rounds`` so that load on the machine hits them
alike; a step = forward + RT-DETR loss (denoising queries, Hungarian matching) + backward + AdamW step on one
batch of ``--batch`` random 256 px images with one box each. Writes ``step.json`` and ``step.md`` to ``--out``.

    OMP_NUM_THREADS=1 python -m bench.speed.bench_rtdetr_step --out bench/results/rtdetr_step
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

VARIANTS = {"rtdetr_lite0 (old)": ("configs/rtdetr/rtdetr_lite0.yaml", False),
            "rtdetr_lite0_fast": ("configs/rtdetr/rtdetr_lite0_fast.yaml", False),
            "rtdetr_lite0_fast + cache_backbone": ("configs/rtdetr/rtdetr_lite0_fast.yaml", True)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "rtdetr_step"))
    return p.parse_args(argv)


def build(model_yaml: str, cache: bool):
    import torch

    from defectfill.detect.backbone import FeatureCache, find_backbone
    from defectfill.detect.rtdetr import _import_rtdetr, resolve_model

    rtdetr = _import_rtdetr(None)  # offline first, then ultralytics' own modules
    from ultralytics.utils import DEFAULT_CFG

    model = rtdetr(resolve_model(model_yaml)).model
    model.nc, model.args = 1, DEFAULT_CFG
    model.train()
    layer = find_backbone(model)[1]
    layer.requires_grad_(False)
    if cache:
        layer.feature_cache = FeatureCache()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def main(argv=None) -> int:
    import torch

    from defectfill.runinfo import atomic_write_text, package_versions

    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.imgsz, args.imgsz)
    batch = {"img": x, "cls": torch.zeros(args.batch, 1), "batch_idx": torch.arange(args.batch).float(),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.08]] * args.batch)}
    built = {name: build(*spec) for name, spec in VARIANTS.items()}

    def step(model, opt):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    for model, opt in built.values():  # warm-up (and the cache's one miss per image)
        step(model, opt)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (model, opt) in built.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt)
            times[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["rtdetr_lite0 (old)"])
    rows = {name: {"median_s_per_step": statistics.median(t), "per_round": t,
                   "ratio_to_old": statistics.median(t) / base,
                   "trained_params": sum(p.numel() for p in built[name][0].parameters() if p.requires_grad)}
            for name, t in times.items()}
    result = {"args": vars(args), "torch_threads": torch.get_num_threads(), "variants": rows, "versions": package_versions()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "step.json", json.dumps(result, indent=1))
    lines = ["# RT-DETR training step on CPU, side by side", "",
             f"`{' '.join(['python', 'bench/speed/bench_rtdetr_step.py', *(argv or sys.argv[1:])])}`; batch {args.batch}, "
             f"{args.imgsz} px, {torch.get_num_threads()} torch thread, {args.rounds} interleaved rounds of "
             f"{args.steps} steps (median of the rounds).", "",
             "| detector | trained params | s / step | vs old |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['trained_params']:,} | {r['median_s_per_step']:.3f} | {r['ratio_to_old']:.2f}x |")
    atomic_write_text(out / "step.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
