"""Segmenter task: the pixel segmenter (``defectfill.downstream.segmenter``) trained on the unit's real
training images plus the first ``count`` synthetic samples, evaluated on the setting's evaluation images."""

from __future__ import annotations

import time
from dataclasses import asdict

from defectfill.benchmark import stats
from defectfill.benchmark.config import sub_config
from defectfill.benchmark.tasks import Task, UnitData
from defectfill.config import load_config
from defectfill.downstream.segmenter import SegmenterConfig, evaluate_segmenter, train_segmenter
from defectfill.downstream.tiles import images_from_reference, images_from_synthetic

# torch-heavy modules are imported where a cell runs: the worker child imports this package and must
# start small (its peak memory is a reported number)


class SegmenterTask(Task):
    name = "segmenter"
    metrics = ("pixel_ap", "pixel_ap_macro", "image_recall@fa5", "region_recall@fa5", "pixel_ap_all_pixels",
               "tile_auroc", "pixel_f1@threshold", "tile_recall@threshold")
    headline = "pixel_ap"
    recall = "tile_recall@threshold"
    stat_metrics = ("pixel_ap", "image_recall@fa5", "region_recall@fa5")

    def check(self, cfg) -> None:
        sub_config(SegmenterConfig, cfg.segmenter, "segmenter")
        for g in cfg.generators:
            if "segmenter" in (g.get("downstream") or {}):
                sub_config(SegmenterConfig, cfg.task_settings("segmenter", g["name"]),
                           f"generator {g['name']!r}: downstream.segmenter")

    def run(self, ctx, cell, data: UnitData) -> dict:
        settings = ctx.cfg.task_settings("segmenter", cell.generator)
        seg = SegmenterConfig(**{**asdict(load_config(SegmenterConfig, **settings)), "seed": cell.seed})
        if "train" not in data.cache:
            pool = images_from_reference(data.pool_dir, seg.in_channels)
            data.cache["train"] = [im for im in pool if im.source_id in data.train_ids]
            data.cache["val"] = [im for im in pool if im.source_id in data.val_ids]
            data.cache["synthetic"] = images_from_synthetic(data.gen_dir, seg.in_channels) if data.gen_dir else []
        train, val, synthetic = data.cache["train"], data.cache["val"], data.cache["synthetic"][:cell.count]
        t0 = time.perf_counter()
        model, log = train_segmenter(seg, [*train, *synthetic], val or None)
        evaluations = {}
        for name, (tiles, groups) in ctx.eval_tiles(cell.setting, cell.fold).items():
            ev = evaluate_segmenter(model, tiles, threshold=log.get("val_threshold"), batch_size=seg.eval_batch_size,
                                    groups=groups, per_source=True)
            for rec in ev["per_source"]:
                rec["fabric"] = ctx.fabric_of(rec["id"])
            ev.update({k: v for k, v in stats.source_metrics(ev["per_source"]).items() if k in self.metrics})
            evaluations[name] = ev
        return {"metrics": {k: v for k, v in evaluations["all"].items() if k != "per_source"},
                "evaluations": evaluations, "steps": seg.steps, "config": asdict(seg),
                "seconds": time.perf_counter() - t0, "val_threshold": log.get("val_threshold"), "val": log.get("val"),
                "train_real_images": len(train), "val_images": len(val), "synthetic_used": len(synthetic),
                "positive_crops": log.get("positive_crops"),
                "synthetic_positive_crops": log.get("synthetic_positive_crops")}

    def summary(self, metrics: dict) -> str:
        return (f"pixel AP {metrics['pixel_ap']:.4f}, image recall@5%FA {metrics.get('image_recall@fa5', float('nan')):.3f}")
