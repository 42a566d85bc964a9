"""Open-set task: DGT's DFC classifier (``defectfill.downstream.openset``) trained on the pool's real
defect crops (the left-out type is not among them) plus the first ``count`` generated samples (their
sidecar class), scored on the evaluation images: known types vs the left-out type (open-set AUROC,
fraction of the unknown type flagged, false-unknown rate on known types)."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from defectfill.benchmark.config import MAIN, sub_config
from defectfill.benchmark.tasks import Task, UnitData
from defectfill.config import load_config
from defectfill.data.splits import defect_types
from defectfill.downstream.openset import DFCConfig, train_dfc
from defectfill.errors import DataError
from defectfill.metrics import load_dataset_crops, load_reference_crops


class OpenSetTask(Task):
    name = "openset"
    metrics = ("auroc", "novel_flagged", "known_false_unknown", "known_accuracy", "known_accuracy_open")
    headline = "auroc"
    recall = "novel_flagged"

    def check(self, cfg) -> None:
        sub_config(DFCConfig, cfg.openset, "openset")

    def run(self, ctx, cell, data: UnitData) -> dict:
        dfc_cfg = load_config(DFCConfig, **{**ctx.cfg.openset, "seed": cell.seed})
        size = dfc_cfg.crop
        real = load_reference_crops(data.pool_dir, size)
        pool_types = defect_types(data.pool_dir)
        images, labels = list(real.images), [pool_types[n] for n in real.names]
        synthetic = []
        if data.gen_dir is not None and cell.count:
            for cls in sorted(set(labels)):
                got = load_dataset_crops(data.gen_dir, size, defect_class=cls)
                synthetic += [(name, img, cls) for name, img in zip(got.names, got.images)]
            synthetic = sorted(synthetic, key=lambda t: t[0])[:cell.count]
        images += [img for _, img, _ in synthetic]
        labels += [cls for _, _, cls in synthetic]
        t0 = time.perf_counter()
        dfc = train_dfc(np.stack(images), labels, dfc_cfg)
        eval_dir = ctx.eval_dir_for(cell.fold, MAIN)
        ev = load_reference_crops(eval_dir, size)
        ev_types = defect_types(eval_dir)
        known = [i for i, n in enumerate(ev.names) if ev_types[n] in dfc.classes]
        novel = [i for i, n in enumerate(ev.names) if ev_types[n] == ctx.left_out]
        if not known or not novel:
            raise DataError(f"{eval_dir}: open-set evaluation needs defects of known types and of "
                            f"{ctx.left_out!r}; got {len(known)} known and {len(novel)} unknown")
        report = dfc.evaluate(ev.images[known], [ev_types[ev.names[i]] for i in known], ev.images[novel])
        metrics = {"auroc": report["auroc"], "novel_flagged": report["novel_flagged_fraction"],
                   "known_false_unknown": report["known_false_unknown_rate"],
                   "known_accuracy": report["known_accuracy"], "known_accuracy_open": report["known_accuracy_open"]}
        return {"metrics": metrics, "evaluations": {"all": metrics}, "openset": report, "config": asdict(dfc_cfg),
                "classes": dfc.classes, "train_real_crops": len(real), "synthetic_used": len(synthetic),
                "steps": dfc_cfg.steps, "seconds": time.perf_counter() - t0, "dfc_log": dfc.log}

    def summary(self, metrics: dict) -> str:
        return f"open-set AUROC {metrics['auroc']:.3f}, unknown flagged {metrics['novel_flagged']:.2f}"

