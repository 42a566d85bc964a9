"""The cross-validated benchmark end to end on a tiny procedural data set (2 folds x 2 seeds, real-only,
one control, copy-paste): folds by source, paired statistics checked against hand-computed values,
and a rerun cell that reproduces its numbers."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest

from defectfill.benchmark.config import BenchmarkConfig
from defectfill.benchmark.runner import Context, plan, run_benchmark
from defectfill.config import load_config
from defectfill.data.splits import cv_folds, few_shot_sample, stratified_folds

SEG = {"steps": 4, "size": 64, "crop": 64, "batch_size": 2, "log_every": 2, "trainable_stages": 0}
GENERATORS = [{"name": "real_only", "class_path": "real_only"}, {"name": "shade", "class_path": "shade"},
              {"name": "copy_paste", "class_path": "copy_paste"}]


def _cfg(data, out, **kw):
    values = dict(data_dir=str(data), output_dir=str(out), folds=2, seeds=[0, 1], tasks=["segmenter"],
                  generators=GENERATORS, synthetic_counts=[2], segmenter=SEG, threads=1,
                  generate={"candidates": 1, "num_inference_steps": 1, "dilation": 6}, metrics={"crop": 32},
                  boundary={"crop": 16, "per_image": 1}, stats={"n_boot": 200})
    return load_config(BenchmarkConfig, **{**values, **kw})


@pytest.fixture(scope="module")
def cv(woven_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_cv")
    cfg = _cfg(woven_root, out)
    return cfg, out, run_benchmark(cfg)


def _cell(out, name):
    return json.loads((out / "cells" / name / "result.json").read_text())


def test_folds_cover_every_source_once_and_balance_strata():
    strata = {f"d{i}": f"type:{'ab'[i % 2]}|fab{i % 3}" for i in range(12)} | {f"g{i}": "good|x" for i in range(5)}
    folds = stratified_folds(strata, 3, seed=7)
    assert set(folds) == set(strata) and set(folds.values()) == {0, 1, 2}
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1  # 17 ids in 3 folds: 6, 6, 5
    good = [folds[f"g{i}"] for i in range(5)]
    assert max(np.bincount(good, minlength=3)) - min(np.bincount(good, minlength=3)) <= 1
    assert folds == stratified_folds(strata, 3, seed=7) and folds != stratified_folds(strata, 3, seed=8)
    # cv_folds stratifies by (type, fabric) for defects and by fabric for good images
    assert cv_folds(["a", "b"], ["g"], {"a": "t", "b": "t"}, {}, 2, 0).keys() == {"a", "b", "g"}


def test_few_shot_sample_takes_k_per_type():
    types = {f"x{i}": "x" for i in range(5)} | {f"y{i}": "y" for i in range(2)} | {"z0": "z"}
    picked = few_shot_sample(types, 3, seed=0)
    assert sum(i.startswith("x") for i in picked) == 3 and {"y0", "y1", "z0"} <= picked and len(picked) == 6
    assert few_shot_sample(types, 3, seed=0) == picked
    assert any(few_shot_sample(types, 3, seed=s) != picked for s in range(1, 5))


def test_splits_keep_evaluation_sources_out_of_training(woven_root, tmp_path):
    cfg = _cfg(woven_root, tmp_path, real_per_type=["all", 1])
    cfg.validate()
    ctx = Context(cfg, tmp_path)
    everything = set(ctx.all_defect) | set(ctx.all_good)
    evals = [ctx.eval_ids(f) for f in (0, 1)]
    assert evals[0] | evals[1] == everything and not evals[0] & evals[1]
    for fold in (0, 1):
        for seed in (0, 1):
            train, val = ctx.split(seed, "main", fold)
            assert not (train | val) & evals[fold] and (train | val) == everything - evals[fold]
            few, few_val = ctx.split(seed, "fewshot1", fold)
            assert few_val == val and few <= train
            kinds = [ctx.types[i] for i in few if i in ctx.types]
            assert len(kinds) == len(set(kinds)) and set(kinds) == {ctx.types[i] for i in train if i in ctx.types}
            assert {g for g in train if g not in ctx.types} <= few  # every clean image of the training side
    assert ctx.split(0, "main", 0) == ctx.split(1, "main", 0)  # val fixed per fold: one fit serves every seed
    names = {c.name for u in plan(cfg) for c in u.cells}
    assert "segmenter-fewshot1-shade-n2-f1-s0" in names and "segmenter-main-real_only-n0-f0-s1" in names


def _exact_wilcoxon_p(deltas):
    """Two-sided exact signed-rank p by enumerating every sign assignment (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(deltas))) + 1
    w = ranks[np.asarray(deltas) > 0].sum()
    total = ranks.sum()
    dist = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(ranks))]
    lo = sum(d <= min(w, total - w) for d in dist) / len(dist)
    return min(1.0, 2 * lo)


def test_cv_grid_runs_and_its_statistics_match_hand_computed_values(cv):
    cfg, out, report = cv
    planned = {c.name for u in plan(cfg) for c in u.cells}
    assert len(planned) == 2 * 2 * 3 and report["run"]["complete"]
    results = json.loads((out / "results.json").read_text())
    rows = {(r["generator"], r["baseline"], r["metric"]): r for r in results["paired"] if r["setting"] == "main"}
    assert ("shade", "real_only", "pixel_ap") in rows and ("copy_paste", "shade", "pixel_ap") in rows
    for gen, base in (("shade", "real_only"), ("copy_paste", "real_only"), ("copy_paste", "shade")):
        row = rows[(gen, base, "pixel_ap")]
        assert row["n_replicates"] == 4 and row["clusters"] == 2
        # hand-computed: each replicate's exact pixel AP (computed from the raw scores, not the histograms)
        deltas = [_cell(out, f"segmenter-main-{gen}-n{2}-f{f}-s{s}")["metrics"]["pixel_ap"]
                  - _cell(out, f"segmenter-main-{base}-n{0 if base == 'real_only' else 2}-f{f}-s{s}")["metrics"]
                  ["pixel_ap"] for f in (0, 1) for s in (0, 1)]
        assert row["mean"] == pytest.approx(float(np.mean(deltas)), abs=2e-3)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert row["verdict"] == ("better" if row["ci_low"] > 0 else "worse" if row["ci_high"] < 0
                                  else "not distinguishable")
        exact = np.asarray(row["deltas"])
        if len(set(np.abs(exact).round(12))) == 4 and np.all(exact != 0):
            assert row["wilcoxon_p"] == pytest.approx(_exact_wilcoxon_p(exact), abs=1e-9)
    # factory metric: image recall at <= 5 % false alarms on the fold's good images, by hand from the records
    cell = _cell(out, "segmenter-main-real_only-n0-f0-s0")
    recs = cell["evaluations"]["all"]["per_source"]
    good = sorted((r["image_score"] for r in recs if r["type"] == "good"), reverse=True)
    threshold = good[int(math.floor(0.05 * len(good)))]
    defect = [r["image_score"] for r in recs if r["type"] != "good"]
    assert cell["metrics"]["image_recall@fa5"] == pytest.approx(sum(s > threshold for s in defect) / len(defect))
    md = (out / "results.md").read_text()
    assert "## Paired statistics" in md and any(f"**{v}**" in md for v in ("better", "worse", "not distinguishable"))
    assert (out / results["forest_plots"]["main"]).is_file()
    assert results["replicates"]["main"]["torch_threads"] == [1]
    # main fits each generator once per fold and every seed of the fold reuses it: 2 fits, 4 replicates
    assert results["replicates"]["main"]["fits"] == {g: {"fits": 2, "replicates": 4} for g in ("copy_paste", "shade")}
    assert "copy_paste 2 fits for 4 replicates" in md


def test_a_rerun_cell_reproduces_its_numbers(cv):
    cfg, out, _ = cv
    name = "segmenter-main-shade-n2-f1-s1"
    before = _cell(out, name)
    shutil.rmtree(out / "cells" / name)
    report = run_benchmark(cfg)
    assert report["run"]["cells_run"] == 1
    after = _cell(out, name)
    for key in ("pixel_ap", "pixel_ap_macro", "image_recall@fa5", "region_recall@fa5", "tile_auroc"):
        assert after["metrics"][key] == before["metrics"][key] or (math.isnan(after["metrics"][key])
                                                                   and math.isnan(before["metrics"][key]))
    assert after["evaluations"]["all"]["per_source"] == before["evaluations"]["all"]["per_source"]
    assert after["runtime"]["torch_threads"] == 1


@pytest.mark.slow
def test_no_val_split_and_no_generation_metrics(woven_root, tmp_path):
    """``val_fraction: 0``: the whole training side trains (nothing held out for a threshold), the
    threshold-free statistics are still there; ``generation_metrics: false`` records the skip."""
    cfg = _cfg(woven_root, tmp_path, val_fraction=0, generation_metrics=False,
               generators=GENERATORS[:2])
    ctx = Context(cfg, tmp_path)
    train, val = ctx.split(0, "main", 1)
    assert val == set() and train == (set(ctx.all_defect) | set(ctx.all_good)) - ctx.eval_ids(1)
    report = run_benchmark(cfg)
    assert report["run"]["complete"]
    cell = _cell(tmp_path, "segmenter-main-shade-n2-f0-s0")
    assert cell["val_images"] == 0 and cell["val_threshold"] is None
    assert cell["train_real_images"] == len(ctx.split(0, "main", 0)[0])
    assert 0 <= cell["metrics"]["pixel_ap"] <= 1 and "pixel_f1@threshold" not in cell["metrics"]
    assert cell["generator_run"]["generation_metrics"] == {"skipped": "generation_metrics: false in the config"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["generator"] for r in results["paired"]} == {"shade"}
    with pytest.raises(Exception, match="rtdetr needs its val split"):
        _cfg(woven_root, tmp_path, val_fraction=0, tasks=["segmenter", "rtdetr"]).validate()


def test_a_grid_may_grow_by_settings_but_not_change_them(woven_root, tmp_path):
    """The standard profile extends the quick one in the same folder: more few-shot sizes and the
    new-fabric setting are new cells; a different new-fabric protocol or segmenter is refused."""
    from defectfill.benchmark.runner import check_grid
    from defectfill.errors import ConfigError

    quick = _cfg(woven_root, tmp_path, real_per_type=["all", 3])
    check_grid(quick, tmp_path)
    nf = {"targets": "all", "min_defects": 1, "eval_good_fraction": 0.5}
    standard = _cfg(woven_root, tmp_path, real_per_type=["all", 1, 3], new_fabric=nf)
    check_grid(standard, tmp_path)
    grid = json.loads((tmp_path / "grid.json").read_text())["settings"]
    assert grid["real_per_type"] == ["1", "3", "all"] and grid["new_fabric"] == nf
    check_grid(quick, tmp_path)  # the quick profile still resumes there
    with pytest.raises(ConfigError, match="new_fabric"):
        check_grid(_cfg(woven_root, tmp_path, new_fabric={**nf, "eval_good_fraction": 0.3}), tmp_path)
    with pytest.raises(ConfigError, match="segmenter"):
        check_grid(_cfg(woven_root, tmp_path, segmenter={**SEG, "steps": 5}), tmp_path)


def test_a_second_process_does_not_rewrite_the_report_another_is_writing(cv):
    """Processes sharing a grid finish together; only the one holding the report lock writes it."""
    from defectfill.benchmark.locks import claim, release

    cfg, out, _ = cv
    lock = out / "locks" / "report.lock"
    before = (out / "results.md").stat().st_mtime_ns
    assert claim(lock)  # held by this (live) process, as another grid process would hold it
    try:
        report = run_benchmark(cfg)
    finally:
        release(lock)
    assert report["rows"] == [] and report["report_by"] and report["run"]["complete"]
    assert (out / "results.md").stat().st_mtime_ns == before
    assert run_benchmark(cfg)["rows"] and (out / "results.md").stat().st_mtime_ns > before
