"""configs/benchmark/aitex_gpu.yaml end to end on CPU, every budget cut to a few steps and the procedural woven
data in place of AITEX: each of its generators fits and feeds both tasks (segmenter, RT-DETR) at the
profile's own batch sizes, crops and generation settings, so that a lent GPU spends its minutes measuring."""

import json
from pathlib import Path

import pytest
import yaml

from defectfill.benchmark.runner import benchmark_main

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "benchmark" / "aitex_gpu.yaml"


def cpu_sized(profile: dict, data: Path, out: Path) -> dict:
    """``profile`` on CPU: devices, step counts, counts and seeds cut; every other setting kept."""
    small = {**profile, "data_dir": str(data), "output_dir": str(out), "folds": 2, "seeds": [0, 1],
             "real_per_type": ["all"], "new_fabric": None, "threads": 1, "synthetic_counts": [2],
             "stats": {"n_boot": 50}}
    small["segmenter"] = {**profile["segmenter"], "device": "cpu", "steps": 3, "log_every": 1}
    small["detector"] = {**profile["detector"], "device": "cpu", "steps": 2}
    small["generators"] = []
    for g in profile["generators"]:
        g = dict(g)
        if "max_steps" in (g.get("init_args") or {}):
            g["init_args"] = {**g["init_args"], "max_steps": 2}
        if g.get("generate"):
            g["generate"] = {**g["generate"], "num_inference_steps": 2}
        small["generators"].append(g)
    return small


@pytest.mark.slow
def test_gpu_profile_runs_end_to_end_on_cpu_at_tiny_budgets(woven_root, tmp_path):
    profile = yaml.safe_load(PROFILE.read_text())
    out = tmp_path / "gpu_profile"
    config = tmp_path / "aitex_gpu_cpu.yaml"
    config.write_text(yaml.safe_dump(cpu_sized(profile, woven_root, out)))
    assert benchmark_main(["--config", str(config)]) == 0
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")]
    generators = {g["name"] for g in profile["generators"]}
    # every generator x both tasks x 2 folds x 2 seeds, each with its scores
    assert {(c["generator"], c["task"]) for c in cells} == {(g, t) for g in generators for t in profile["tasks"]}
    assert len(cells) == len(generators) * len(profile["tasks"]) * 2 * 2
    for c in cells:
        score = c["metrics"]["pixel_ap"] if c["task"] == "segmenter" else c["metrics"]["map50"]
        assert 0 <= (score or 0) <= 1, c["cell"]
    report = json.loads((out / "results.json").read_text())
    assert report["rows"]
