"""A generator's ``downstream`` settings: its cells train the segmenter / RT-DETR with them (e.g. synthetic
pretraining, then real fine-tuning at the grid's budget), every other row with the grid's."""

import json

import pytest
import yaml

from defectfill.benchmark.runner import BenchmarkConfig
from defectfill.benchmark.tasks import get as task
from defectfill.cli import benchmark_main
from defectfill.config import load_config
from defectfill.errors import ConfigError

SEG = {"steps": 8, "size": 64, "crop": 64, "batch_size": 4, "log_every": 4, "synthetic_fraction": 0.3}
PRETRAIN = {"segmenter": {"synthetic_fraction": 1.0, "synthetic_phase": 0.5}, "detector": {"synthetic_phase": 0.5}}


def test_downstream_settings_apply_to_their_generator_only(woven_root, tmp_path):
    out = tmp_path / "grid"
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({
        "data_dir": str(woven_root), "output_dir": str(out), "folds": 2, "seeds": [0, 1], "val_fraction": 0,
        "tasks": ["segmenter"], "generation_metrics": False, "synthetic_counts": [4], "segmenter": SEG,
        "generators": [{"name": "real_only", "class_path": "real_only"},
                       {"name": "copy_paste", "class_path": "copy_paste"},
                       {"name": "copy_paste_pretrain", "class_path": "copy_paste", "downstream": PRETRAIN}],
        "stats": {"n_boot": 50}}))
    assert benchmark_main(["--config", str(profile)]) == 0
    cells = {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}
    assert len(cells) == 12
    for name, c in cells.items():
        phase, share = (0.5, 1.0) if c["generator"] == "copy_paste_pretrain" else (1.0, 0.3)
        assert (c["config"]["synthetic_phase"], c["config"]["synthetic_fraction"]) == (phase, share), name
        assert c["config"]["steps"] == SEG["steps"]  # the same total budget
        if c["generator"] == "copy_paste_pretrain":
            # synthetic positives only in the first half, real ones after it
            assert 0 < c["synthetic_positive_crops"] < c["positive_crops"], name
    # the generator's own copy-paste samples are the same: same fit, same seed, same generation settings
    for fold in (0, 1):
        for seed in (0, 1):
            a = cells[f"segmenter-main-copy_paste-n4-f{fold}-s{seed}"]["synthetic_used"]
            assert cells[f"segmenter-main-copy_paste_pretrain-n4-f{fold}-s{seed}"]["synthetic_used"] == a == 4
    # the report pairs the pretraining row with real-only like any generator
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["generator"] for r in rows} >= {"copy_paste_pretrain"}


def test_downstream_settings_are_checked():
    cfg = load_config(BenchmarkConfig, seeds=[0, 1], segmenter=SEG, detector={"steps": 10},
                      generators=[{"name": "pre", "class_path": "copy_paste", "downstream": PRETRAIN}])
    assert cfg.task_settings("segmenter", "pre") == {**SEG, **PRETRAIN["segmenter"]}
    assert cfg.task_settings("segmenter", "real_only") == SEG
    assert cfg.task_settings("detector", "pre") == {"steps": 10, "synthetic_phase": 0.5}
    task("segmenter").check(cfg)
    task("rtdetr").check(cfg)
    for downstream, says in (({"openset": {}}, "downstream.openset"), ({"segmenter": 3}, "downstream.segmenter")):
        with pytest.raises(ConfigError, match=says):
            load_config(BenchmarkConfig, seeds=[0, 1],
                        generators=[{"name": "pre", "class_path": "copy_paste", "downstream": downstream}])
    for key, bad, says in (("segmenter", {"synthetic_phase": 2}, "synthetic_phase"),
                           ("detector", {"synthetic_phase": 0}, "synthetic_phase"),
                           ("detector", {"lr0": "fast"}, "lr0")):
        cfg = load_config(BenchmarkConfig, seeds=[0, 1], segmenter=SEG, detector={"steps": 10},
                          generators=[{"name": "pre", "class_path": "copy_paste", "downstream": {key: bad}}])
        with pytest.raises(ConfigError, match=f"generator 'pre': downstream.{key}.*{says}"):
            task(key if key == "segmenter" else "rtdetr").check(cfg)
