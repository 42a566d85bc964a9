"""RT-DETR task (ultralytics, offline) in a child process: trained on the unit's real pool (its val ids
as val) plus the first ``count`` synthetic samples for about ``detector.steps`` batches; with
``detector.synthetic_phase`` p < 1 (e.g. in a generator's ``downstream``), the first p of the budget on the
synthetic samples alone, the rest on the real ones (``worker.detector_job``)."""

from __future__ import annotations

from defectfill.benchmark.config import sub_config
from defectfill.benchmark.tasks import Task, UnitData
from defectfill.benchmark.worker import run_job
from defectfill.detect.rtdetr import DetectorConfig
from defectfill.errors import ConfigError

# detector settings the benchmark reads itself (the rest is DetectorConfig)
BENCHMARK_KEYS = ("steps", "eval_good_tiles_per_image", "synthetic_phase")


class RTDETRTask(Task):
    name = "rtdetr"
    metrics = ("map50", "map50_95", "precision", "recall", "f1")
    headline = "map50"
    recall = "recall"

    def check(self, cfg) -> None:
        self._check(cfg.detector, "detector")
        for g in cfg.generators:
            if "detector" in (g.get("downstream") or {}):
                self._check(cfg.task_settings("detector", g["name"]), f"generator {g['name']!r}: downstream.detector")

    @staticmethod
    def _check(values: dict, key: str) -> None:
        steps = values.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{key}.steps: must be a positive integer, got {steps!r}")
        eval_good = values.get("eval_good_tiles_per_image")
        if eval_good is not None and (isinstance(eval_good, bool) or not isinstance(eval_good, int) or eval_good < 0):
            raise ConfigError(f"{key}.eval_good_tiles_per_image: must be an integer >= 0, got {eval_good!r}")
        phase = values.get("synthetic_phase", 1.0)
        if isinstance(phase, bool) or not isinstance(phase, (int, float)) or not 0 < phase <= 1:
            raise ConfigError(f"{key}.synthetic_phase: must be in (0, 1] (the share of steps trained on synthetic "
                              f"samples before real fine-tuning; 1: mixed throughout), got {phase!r}")
        det = {k: v for k, v in values.items() if k not in BENCHMARK_KEYS}
        sub_config(DetectorConfig, {k: v for k, v in det.items() if v is not None}, key)

    def run(self, ctx, cell, data: UnitData) -> dict:
        det = ctx.cfg.task_settings("detector", cell.generator)
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
