"""bench/experiments/select_nested_cv.py: a setting chosen by inner cross-validation on an outer fold's training
side only, with the choice checked against the inner cells' own scores."""

import importlib.util
import json

import pytest
import yaml


def _module():
    return importlib.import_module("bench.experiments.select_nested_cv")


def test_with_key_and_choose():
    sel = _module()
    values = {"segmenter": {"steps": 600, "size": 64}, "folds": 5}
    changed = sel.with_key(values, "segmenter.steps", 300)
    assert changed == {"segmenter": {"steps": 300, "size": 64}, "folds": 5} and values["segmenter"]["steps"] == 600
    assert sel.get_key(changed, "segmenter.steps") == 300 and sel.get_key(changed, "nothing.here") is None
    gens = {"generators": [{"name": "a", "init_args": {"max_steps": 200}}, {"name": "b"}]}
    assert sel.with_key(gens, "generators.b.init_args.max_steps", 800)["generators"] == [
        {"name": "a", "init_args": {"max_steps": 200}}, {"name": "b", "init_args": {"max_steps": 800}}]
    assert [g["init_args"]["max_steps"] for g in sel.with_key(gens, "generators.*.init_args.max_steps", 5)
            ["generators"]] == [5, 5] and gens["generators"][0]["init_args"]["max_steps"] == 200
    assert sel.get_key(gens, "generators.a.init_args.max_steps") == 200
    assert sel.get_key(gens, "generators.b.init_args.max_steps") is None
    with pytest.raises(ValueError, match="name a key inside"):
        sel.with_key(gens, "generators.a", 1)
    assert sel.choose({300: 0.1, 600: 0.3, 1200: 0.3}) == 600  # ties: the first listed
    assert sel.choose({300: None, 600: 0.05}) == 600 and sel.choose({1: None}) is None


@pytest.mark.slow
def test_nested_selection_uses_training_folds_only(woven_root, tmp_path):
    sel = _module()
    profile = {"data_dir": str(woven_root), "folds": 2, "seeds": [0, 1], "val_fraction": 0, "threads": 1,
               "tasks": ["segmenter"], "generation_metrics": False, "output_dir": str(tmp_path / "unused"),
               "generators": [{"name": "real_only", "class_path": "real_only"}], "synthetic_counts": [2],
               "segmenter": {"steps": 4, "size": 32, "crop": 64, "batch_size": 2, "log_every": 2,
                             "trainable_stages": 0}}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "sel"
    assert sel.main(["--profile", str(path), "--key", "segmenter.steps", "--values", "1", "6", "--outer-folds", "0",
                     "--inner-folds", "2", "--seeds", "0", "1", "--work", str(tmp_path / "work"),
                     "--out", str(out)]) == 0
    result = json.loads((out / "selection.json").read_text())
    row = result["outer"][0]
    # by hand: the mean pixel AP of each candidate's inner cells, the larger one chosen
    means = {}
    for steps in (1, 6):
        cells = sorted((tmp_path / "work" / "outer0" / f"segmenter.steps={steps}" / "cells").glob("*/result.json"))
        scores = [json.loads(p.read_text())["metrics"]["pixel_ap"] for p in cells]
        assert len(scores) == 4  # 2 inner folds x 2 seeds
        assert all(json.loads(p.read_text())["steps"] == steps for p in cells)
        means[steps] = sum(scores) / len(scores)
        assert row["means"][str(steps)] == pytest.approx(means[steps])
    assert row["chosen"] == max(means, key=lambda k: (means[k], -k))
    # the inner data is the outer fold's training side: no outer evaluation source in it
    from defectfill.benchmark.config import BenchmarkConfig
    from defectfill.benchmark.runner import Context
    from defectfill.config import load_config

    ctx = Context(load_config(BenchmarkConfig, **profile), tmp_path / "ctx")
    inner_ids = {p.stem for sub in ("images", "good") for p in (tmp_path / "work" / "outer0" / "data" / sub).iterdir()}
    assert inner_ids and not inner_ids & ctx.eval_ids(0)
    assert inner_ids == (set(ctx.all_defect) | set(ctx.all_good)) - ctx.eval_ids(0)
    assert "segmenter.steps" in (out / "selection.md").read_text()
