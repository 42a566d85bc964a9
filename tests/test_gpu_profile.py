"""configs/benchmark/aitex_gpu.yaml end to end on CPU, every budget cut to a few steps and the procedural woven
data in place of AITEX: each of its generators fits and feeds the segmenter, and RT-DETR trains on real-only and
copy-paste data, at the profile's own batch sizes, crops and generation settings, so that a lent GPU spends its
minutes measuring. (RT-DETR reads every generator's samples through the same SampleWriter reader; two of them
keep the test's RT-DETR cells few.)"""

import json
from pathlib import Path

import pytest
import yaml

from defectfill.cli import benchmark_main

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "benchmark" / "aitex_gpu.yaml"


def cpu_sized(profile: dict, data: Path, out: Path, tasks: list, generators: set | None = None,
              eval_data: Path | None = None) -> dict:
    """``profile`` on CPU: devices, step counts, counts and seeds cut; every other setting kept. RT-DETR needs
    defect images in its val split: the woven data's 6 leave too few to a fold's training side, so its part
    trains on all of them (val_fraction 0.5) and evaluates on a second woven folder (3 seeds, as that
    protocol needs)."""
    protocol = {"folds": 2, "seeds": [0, 1]} if eval_data is None else {
        "eval_data": str(eval_data), "seeds": [0, 1, 2], "val_fraction": 0.5}
    small = {**profile, "data_dir": str(data), "output_dir": str(out), "tasks": tasks, **protocol,
             "real_per_type": ["all"], "new_fabric": None, "threads": 1, "synthetic_counts": [2],
             "stats": {"n_boot": 50}}
    small["segmenter"] = {**profile["segmenter"], "device": "cpu", "steps": 3, "log_every": 1}
    small["detector"] = {**profile["detector"], "device": "cpu", "steps": 2}
    small["generators"] = []
    for g in profile["generators"]:
        if generators is not None and g["name"] not in generators:
            continue
        g = dict(g)
        if "max_steps" in (g.get("init_args") or {}):
            g["init_args"] = {**g["init_args"], "max_steps": 2}
        if g.get("generate"):
            g["generate"] = {**g["generate"], "num_inference_steps": 2}
        small["generators"].append(g)
    return small


@pytest.mark.slow
def test_gpu_profile_runs_end_to_end_on_cpu_at_tiny_budgets(woven_root, tmp_path):
    from defectfill.data import make_woven_dataset

    profile = yaml.safe_load(PROFILE.read_text())
    assert set(profile["tasks"]) == {"segmenter", "rtdetr"}
    every = {g["name"] for g in profile["generators"]}
    held_out = make_woven_dataset(tmp_path / "woven_eval", height=128, width=512, seed=1)
    for tasks, generators, eval_data, replicates in ((["segmenter"], every, None, 4),
                                                     (["rtdetr"], {"real_only", "copy_paste"}, held_out, 3)):
        out = tmp_path / tasks[0]
        config = tmp_path / f"aitex_gpu_{tasks[0]}.yaml"
        config.write_text(yaml.safe_dump(cpu_sized(profile, woven_root, out, tasks, generators, eval_data)))
        assert benchmark_main(["--config", str(config)]) == 0, tasks
        cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")]
        # every generator x (2 folds x 2 seeds | 3 seeds), each with its score
        assert sorted(c["generator"] for c in cells) == sorted(list(generators) * replicates)
        for c in cells:
            score = c["metrics"]["pixel_ap"] if tasks == ["segmenter"] else c["metrics"]["map50"]
            assert 0 <= (score or 0) <= 1, c["cell"]
        assert json.loads((out / "results.json").read_text())["rows"]
