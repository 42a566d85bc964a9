"""RT-DETR task (ultralytics, offline) in a child process: trained on the unit's real pool (its val ids
as val) plus the first ``count`` synthetic samples for about ``detector.steps`` batches."""

from __future__ import annotations

from defectfill.benchmark.tasks import Task, UnitData
from defectfill.errors import ConfigError


class RTDETRTask(Task):
    name = "rtdetr"
    metrics = ("map50", "map50_95", "precision", "recall", "f1")
    headline = "map50"
    recall = "recall"

    def check(self, cfg) -> None:
        from defectfill.benchmark.config import sub_config
        from defectfill.detect.rtdetr import DetectorConfig

        steps = cfg.detector.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"detector.steps: must be a positive integer, got {steps!r}")
        eval_good = cfg.detector.get("eval_good_tiles_per_image")
        if eval_good is not None and (isinstance(eval_good, bool) or not isinstance(eval_good, int) or eval_good < 0):
            raise ConfigError(f"detector.eval_good_tiles_per_image: must be an integer >= 0, got {eval_good!r}")
        det = {k: v for k, v in cfg.detector.items() if k not in ("steps", "eval_good_tiles_per_image")}
        sub_config(DetectorConfig, {k: v for k, v in det.items() if v is not None}, "detector")

    def run(self, ctx, cell, data: UnitData) -> dict:
        from defectfill.benchmark.worker import run_job

        det = dict(ctx.cfg.detector)
        if cell.setting.startswith("split_long"):
            det["split_long"] = float(ctx.cfg.label_noise["split_long"])
        work = data.unit_dir / "det" / cell.name
        job = {"kind": "detector", "pool_dir": str(data.pool_dir), "val_ids": sorted(data.val_ids), "detector": det,
               "synthetic_dirs": [str(data.gen_dir)] if data.gen_dir is not None and cell.count else [],
               "limit": cell.count or None, "seed": cell.seed, "work_dir": str(work),
               "evals": ctx.eval_detection(cell.setting, cell.fold)}
        result = run_job(job, work / "job")
        return {"metrics": result["evaluations"]["all"], **result, "steps": result["iterations"]}

    def summary(self, metrics: dict) -> str:
        return f"mAP50 {metrics.get('map50') or 0:.4f} recall {metrics.get('recall') or 0:.3f}"
