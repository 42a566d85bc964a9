"""Where a segmenter cell's time goes, on one CPU thread: per training step (batch sampling, frozen encoder
forward, the trainable part's forward + backward + Adam) and per evaluation image (fabric regions, tiles ->
probabilities -> metrics), for the benchmark's segmenter and cheaper variants.

    OMP_NUM_THREADS=1 python bench/results/segmenter_cheap_cell/profile_cell.py \\
        --out bench/results/segmenter_cheap_cell/profile.json

Data: the AITEX dev images of the benchmark's training side (the 30 % held out by source with split seed
1234 are not read), 15 defect + 10 good images for the training tiles, and 6 defect + 4 good of them as
evaluation images (timing only: no metric here is a result).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

VARIANTS = {  # name -> SegmenterConfig overrides of the benchmark cell (configs/benchmark/aitex_cpu.yaml)
    "bench_ts2": {},
    "ts1": {"trainable_stages": 1},
    "ts0": {"trainable_stages": 0},
    "ts0_dec16": {"trainable_stages": 0, "decoder_channels": 16},
    "ts2_dec16": {"decoder_channels": 16},
    "ts1_dec16": {"trainable_stages": 1, "decoder_channels": 16},
    "ts2_size96": {"size": 96},
    "ts2_size64": {"size": 64},
    "ts1_size64": {"trainable_stages": 1, "size": 64},
    "ts0_size64": {"trainable_stages": 0, "size": 64},
}
BENCH = dict(arch="unet_lite0", trainable_stages=2, steps=600, size=128, crop=128, batch_size=8,
             synthetic_fraction=0.3, log_every=100)


def timed(fn, repeat: int) -> float:
    t0 = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - t0) / repeat


def profile(name: str, overrides: dict, train, evals, steps: int, eval_images: int) -> dict:
    import torch
    import torch.nn.functional as F

    from defectfill.backbones import normalize
    from defectfill.downstream.segmenter import (
        SegmenterConfig,
        build_model,
        eval_tiles_for,
        evaluate_segmenter,
        train_tiles_for,
    )

    cfg = SegmenterConfig(**{**BENCH, **overrides}).validate()
    tiles = train_tiles_for(cfg, train)
    model = build_model(cfg).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    pw = torch.tensor([cfg.pos_weight])
    batches = [tiles.batch(s, cfg.batch_size) for s in range(steps + 3)]
    t_batch = timed(lambda i: tiles.batch(100 + i, cfg.batch_size), steps)

    def step(i):
        b = batches[i]
        loss = F.binary_cross_entropy_with_logits(model(b["images"]), b["masks"], pos_weight=pw)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    t_step = timed(lambda i: step(3 + i), steps)

    enc = model.net.encoder.model
    frozen = model.frozen

    def frozen_forward(i):
        x = normalize(batches[i]["images"])
        for m in frozen:
            x = m(x)

    with torch.no_grad():
        t_frozen = timed(frozen_forward, steps)
        t_encoder = timed(lambda i: enc(normalize(batches[i]["images"])), steps)
        model.eval()
        t_full_fwd = timed(lambda i: model(batches[i]["images"]), steps)
        model.train()
    t_frozen_grad_on = timed(frozen_forward, steps)  # as in training: params need no grad, so no graph

    t0 = time.perf_counter()
    et = eval_tiles_for(cfg, evals[:eval_images])
    t_regions = (time.perf_counter() - t0) / eval_images
    res = evaluate_segmenter(model, et, batch_size=cfg.eval_batch_size)
    t_eval = res["seconds"] / eval_images
    res_ps = evaluate_segmenter(model, et, batch_size=cfg.eval_batch_size, per_source=True)
    t_eval_ps = res_ps["seconds"] / eval_images
    row = {"variant": name, "config": {k: v for k, v in asdict(cfg).items() if k in
                                       ("trainable_stages", "decoder_channels", "size", "crop", "batch_size")},
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "s_per_step": t_step, "s_batch_sampling": t_batch, "s_frozen_encoder_fwd_nograd": t_frozen,
           "s_frozen_encoder_fwd_grad_enabled": t_frozen_grad_on, "s_whole_encoder_fwd_nograd": t_encoder,
           "s_whole_model_fwd_eval_nograd": t_full_fwd,
           "s_trainable_fwd_bwd_adam": t_step - t_frozen,
           "s_eval_regions_per_image": t_regions, "s_eval_per_image": t_eval,
           "s_eval_per_image_with_per_source": t_eval_ps, "eval_tiles_per_image": len(et) / eval_images}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "aitex"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--eval-images", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch

    from defectfill.data.splits import defect_types, select_ids, split_ids
    from defectfill.downstream.tiles import images_from_reference

    torch.set_num_threads(1)
    data = Path(args.data)
    defect, good = select_ids(data)
    held = split_ids(defect, good, defect_types(data), 0.3, 1234)
    keep_d = [i for i in defect if i not in held]
    keep_g = [i for i in good if i not in held]
    wanted = set(keep_d[:15] + keep_g[:10])
    pool = [im for im in images_from_reference(data, 1) if im.id in wanted]
    train = pool
    evals = [im for im in pool if im.has_defect][:6] + [im for im in pool if not im.has_defect][:4]
    rows = [profile(v, VARIANTS[v], train, evals, args.steps, args.eval_images) for v in args.variants]
    record = {"command": "OMP_NUM_THREADS=1 python bench/results/segmenter_cheap_cell/profile_cell.py "
                         + " ".join(sys.argv[1:]),
              "torch_threads": torch.get_num_threads(), "train_images": len(train), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
