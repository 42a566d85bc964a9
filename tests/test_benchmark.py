"""Benchmark runner: the quick profile on procedural data (segmenter + RT-DETR cells, the two
open-question settings, a failing generator), the full report, paired deltas, resume and locks."""

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectfill.benchmark.locks import claim as _claim
from defectfill.benchmark.runner import BenchmarkConfig, plan, run_benchmark
from defectfill.cli import benchmark_main
from defectfill.config import load_config
from defectfill.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "benchmark" / "aitex_quick.yaml"
SEG = {"steps": 6, "size": 64, "crop": 64, "batch_size": 4, "log_every": 3}
GENERATORS = [{"name": "real_only", "class_path": "real_only"},
              {"name": "copy_paste", "class_path": "copy_paste", "init_args": {}},
              {"name": "defectfill", "class_path": "defectfill",
               "init_args": {"config": "configs/defectfill/tiny.yaml", "max_steps": 2, "checkpointing_steps": 100}},
              # passes the checks before any cell, fails when fitted: its data has no such class
              {"name": "broken", "class_path": "dgt", "init_args": {"defect_types": ["no_such_class"], "max_steps": 2}}]
LEFT_OUT = "broken_yarn"


def _cfg(data, eval_data, model, out, **kw):
    generators = [{**g, "init_args": {**g["init_args"], "model": str(model)}} if g["name"] == "defectfill" else g
                  for g in GENERATORS]
    values = {"data_dir": str(data), "eval_data": str(eval_data), "output_dir": str(out),
              "max_images": None, "segmenter": SEG, "synthetic_counts": [2], "generators": generators,
              "leave_out": {"defect_type": LEFT_OUT, "generators": ["real_only", "copy_paste"],
                            "tasks": ["segmenter", "openset"]}}
    return load_config(BenchmarkConfig, PROFILE, **{**values, **kw})


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    from defectfill.data import make_woven_dataset

    return make_woven_dataset(tmp_path_factory.mktemp("woven_eval") / "data", height=128, width=512, seed=1)


@pytest.fixture(scope="module")
def bench(woven_root, eval_root, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = _cfg(woven_root, eval_root, tiny_model_dir, out)
    report = run_benchmark(cfg)
    return cfg, out, report


def _cell(out, name):
    return json.loads((out / "cells" / name / "result.json").read_text())


def test_every_planned_cell_is_run_and_reported(bench):
    cfg, out, report = bench
    planned = {c.name for u in plan(cfg) for c in u.cells}
    done = {p.parent.name for p in (out / "cells").glob("*/result.json")}
    failed = {p.parent.name for p in (out / "cells").glob("*/error.json")}
    assert done | failed == planned and not done & failed
    assert failed == {c for c in planned if "-broken-" in c}  # only the generator that cannot be fitted
    assert {"segmenter-main-real_only-n0-f0-s2", "rtdetr-main-copy_paste-n2-f0-s1", "rtdetr-split_long4-real_only-n0-f0-s0",
            f"segmenter-without_{LEFT_OUT}-copy_paste-n2-f0-s0"} <= done
    results = json.loads((out / "results.json").read_text())
    assert {e["cell"] for e in results["errors"]} == failed
    assert all("no_such_class" in e["error"] for e in results["errors"])
    assert report["run"]["cells_failed"] == len(failed)
    assert results["eval_source"][0] == {"kind": "eval_data", "path": str(cfg.eval_data)}
    for row in results["rows"]:
        assert row["seeds"] == ["f0-s0", "f0-s1", "f0-s2"], row
        metric = {"segmenter": "pixel_ap", "rtdetr": "map50", "openset": "auroc"}[row["task"]]
        assert math.isfinite(row[metric]["mean"]) and math.isfinite(row[f"delta_{metric}"]["mean"])
    md = (out / "results.md").read_text()
    for text in ("## Segmenter", "## RT-DETR", "## Generators", "Open question 1", "Open question 2",
                 "cell(s) failed", "RANDOM", "tiny RANDOM inpainting pipeline"):
        assert text in md, text
    for png in ("segmenter_pixel_ap.png", "rtdetr_map50.png", "recall_per_type.png", "gallery_main.png"):
        assert (out / png).stat().st_size > 1000, png
        assert png in md


def test_deltas_are_paired_per_seed(bench):
    _, out, _ = bench
    results = json.loads((out / "results.json").read_text())
    for task, metric, gen in (("segmenter", "pixel_ap", "copy_paste"), ("rtdetr", "recall", "defectfill")):
        row = next(r for r in results["rows"] if (r["task"], r["setting"], r["generator"]) == (task, "main", gen))
        pairs = {s: (_cell(out, f"{task}-main-{gen}-n2-f0-s{s}")["evaluations"]["all"][metric],
                     _cell(out, f"{task}-main-real_only-n0-f0-s{s}")["evaluations"]["all"][metric]) for s in (0, 1, 2)}
        by_hand = {s: a - b for s, (a, b) in pairs.items()}
        mean = sum(by_hand.values()) / 3
        for s, d in by_hand.items():
            assert row[f"delta_{metric}"]["per_seed"][f"f0-s{s}"] == pytest.approx(d, abs=1e-12)
        assert row[f"delta_{metric}"]["mean"] == pytest.approx(mean, abs=1e-12)
        assert row[f"delta_{metric}"]["std"] == pytest.approx(
            math.sqrt(sum((d - mean) ** 2 for d in by_hand.values()) / 2), abs=1e-12)


def test_equal_budgets_and_same_real_data(bench):
    cfg, out, _ = bench
    seg = [_cell(out, n) for n in ("segmenter-main-real_only-n0-f0-s1", "segmenter-main-copy_paste-n2-f0-s1")]
    assert seg[0]["steps"] == seg[1]["steps"] == SEG["steps"]
    assert seg[0]["train_real_images"] == seg[1]["train_real_images"]
    assert (seg[0]["synthetic_used"], seg[1]["synthetic_used"]) == (0, 2)
    det = [_cell(out, n) for n in ("rtdetr-main-real_only-n0-f0-s1", "rtdetr-main-copy_paste-n2-f0-s1")]
    target = cfg.detector["steps"]
    for d in det:  # whole epochs: within half an epoch of the target batches
        assert abs(d["iterations"] - target) <= d["batches_per_epoch"] / 2 + 1e-9 or d["epochs"] == 1
    assert det[1]["splits"]["train"]["by_kind"]["synthetic"] > 0 == det[0]["splits"]["train"]["by_kind"]["synthetic"]
    assert det[0]["splits"]["val"] == det[1]["splits"]["val"]  # the same real val tiles


def test_split_long_gives_more_training_boxes_and_same_evaluation(bench):
    _, out, _ = bench
    one, split = (_cell(out, f"rtdetr-{s}-real_only-n0-f0-s0") for s in ("main", "split_long4"))
    assert split["config"]["split_long"] == 4 and one["config"]["split_long"] is None
    assert split["splits"]["train"]["boxes"] > one["splits"]["train"]["boxes"]
    assert split["splits"]["train"]["images"] == one["splits"]["train"]["images"]
    assert split["evaluations"]["all"]["instances"] == one["evaluations"]["all"]["instances"]
    results = json.loads((out / "results.json").read_text())
    assert {r["metric"] for r in results["label_noise"]["split_long4"]} == {"map50", "recall"}
    fill = results["label_fill"]
    assert fill["split_long4"]["boxes"] > fill["one_box_per_component"]["boxes"] > 0
    assert fill["split_long4"]["mean_fill"] >= fill["one_box_per_component"]["mean_fill"]


def sources_ids(paths):
    return {Path(p).stem for p in paths}


def test_left_out_type_is_absent_from_training_and_generation(bench):
    _, out, _ = bench
    base = out / "work" / "f0" / f"without_{LEFT_OUT}"
    with (base / "pool" / "manifest.csv").open() as f:
        types = {r["defect_type"] for r in csv.DictReader(f)}
    assert LEFT_OUT not in types and types - {"good"}
    sidecars = (base / "copy_paste" / "s0" / "gen" / "sidecars").glob("*.json")
    classes = {json.loads(p.read_text())["defect_class"] for p in sidecars}
    assert classes and LEFT_OUT not in classes
    cell = _cell(out, f"segmenter-without_{LEFT_OUT}-real_only-n0-f0-s0")
    assert set(cell["evaluations"]) == {"all", f"type_{LEFT_OUT}"}
    assert cell["evaluations"][f"type_{LEFT_OUT}"]["positive_tiles"] > 0
    results = json.loads((out / "results.json").read_text())
    table = results["leave_out"][f"without_{LEFT_OUT}"]["segmenter"]["tile_recall@threshold"]
    assert {r["generator"] for r in table} == {"real_only", "copy_paste"}


def test_generators_report_cost_and_generation_metrics(bench):
    _, out, _ = bench
    gens = {g["generator"]: g for g in json.loads((out / "results.json").read_text())["generators"]}
    assert set(gens) == {"copy_paste", "defectfill"}
    for g in gens.values():
        assert g["peak_rss_mib"]["mean"] > 50 and g["fit_generate_seconds"]["mean"] > 0
        assert math.isfinite(g["frechet_distance"]["mean"]) and g["standard"] is False
        assert g["frechet_name"] == "Fréchet distance (EfficientNet-Lite0 features)" and "RANDOM" not in g["extractor"]
    assert "tiny RANDOM" in gens["defectfill"]["base_model"]["note"]
    with Image.open(out / "gallery_main.png") as im:  # clean | mask | copy_paste | defectfill
        assert im.width > im.height


def test_open_set_cells_answer_the_unknown_type_with_dfc(bench):
    cfg, out, report = bench
    for gen, n in (("real_only", 0), ("copy_paste", 2)):
        for seed in cfg.seeds:
            cell = _cell(out, f"openset-without_{LEFT_OUT}-{gen}-n{n}-f0-s{seed}")
            o = cell["openset"]
            assert LEFT_OUT not in cell["classes"] and len(cell["classes"]) >= 2
            assert o["novel"] > 0 and o["known"] > 0 and 0 <= o["auroc"] <= 1
            assert cell["synthetic_used"] == n
            # the unknown threshold was chosen on the training crops: about (1 - quantile) of them flagged
            assert cell["metrics"]["novel_flagged"] == o["novel_flagged_fraction"]
    md = (out / "results.md").read_text()
    assert f"## Unknown defect type `{LEFT_OUT}` answered with DFC" in md
    assert "## The fusion question" in md and "boundary Fréchet" in md
    rows = {r["generator"]: r for r in report["generators"]}
    assert rows["copy_paste"]["boundary_frechet"]["n"] == len(cfg.seeds)


def test_second_run_skips_every_finished_cell_and_retries_failures(bench, woven_root, eval_root, tiny_model_dir):
    _, out, _ = bench
    files = sorted((out / "cells").glob("*/result.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    report = run_benchmark(_cfg(woven_root, eval_root, tiny_model_dir, out))
    assert report["run"]["cells_run"] == 0 and report["run"]["cells_skipped"] == len(files)
    assert report["run"]["cells_failed"] == 6  # retried (3 seeds x segmenter + rtdetr), failed again
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes


def test_changed_settings_are_refused(bench, woven_root, eval_root, tiny_model_dir, capsys):
    _, out, _ = bench
    rc = benchmark_main(["--config", str(PROFILE), "--output-dir", str(out), "--set", f"data_dir={woven_root}",
                         "--eval-data-dir", str(eval_root), "--set", "segmenter={steps: 7}"])
    assert rc == 2
    assert "segmenter" in capsys.readouterr().err
    start = time.perf_counter()
    assert benchmark_main(["--config", str(PROFILE), "--output-dir", str(out), "--report-only"]) == 0
    assert time.perf_counter() - start < 30


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        load_config(BenchmarkConfig, PROFILE, tasks=["segmenter", "yolo"])
    seg_only = load_config(BenchmarkConfig, PROFILE, tasks=["segmenter"])
    seg_only.validate()
    assert {c.task for u in plan(seg_only) for c in u.cells} == {"segmenter"}
    with pytest.raises(ConfigError, match="3 seeds"):
        load_config(BenchmarkConfig, PROFILE, seeds=[0, 1])
    with pytest.raises(ConfigError, match="not in generators"):
        load_config(BenchmarkConfig, PROFILE, leave_out={"defect_type": "x", "generators": ["nope"]})


def test_generator_spec_has_one_spelling():
    """class_path + init_args only: the old spellings kind / fit, and a second YAML behind init_args, are
    errors that name the new form."""
    from defectfill.benchmark.config import normalise_spec

    for spec, old, new in (({"name": "cp", "kind": "copy_paste"}, "kind", "class_path"),
                           ({"name": "cp", "class_path": "copy_paste", "fit": {}}, "fit", "init_args")):
        with pytest.raises(ConfigError) as err:
            load_config(BenchmarkConfig, PROFILE, generators=[spec])
        assert str(err.value).startswith(f"generator 'cp': {old} is no longer read: write {new} instead")
        with pytest.raises(ConfigError, match=f"{old} is no longer read: write {new}"):
            normalise_spec(dict(spec))
    with pytest.raises(ConfigError) as err:
        load_config(BenchmarkConfig, PROFILE, generators=[{"name": "cp", "kind": "copy_paste", "fit": {}}])
    assert "kind and fit is no longer read: write class_path and init_args" in str(err.value)
    spec = normalise_spec({"name": "copy_paste"})  # class_path defaults to the name
    assert spec == {"name": "copy_paste", "class_path": "copy_paste", "init_args": {}}


def _ids_of(folder: Path, sub: str) -> set[str]:
    return {p.stem for p in (folder / sub).iterdir()} if (folder / sub).is_dir() else set()


@pytest.mark.parametrize("separate_eval", [False, True])
def test_new_fabric_protocol_never_trains_on_the_target_fabrics_defects(tmp_path, separate_eval):
    from defectfill.data import make_woven_dataset

    data = make_woven_dataset(tmp_path / "data", n_defect=6, n_good=4, height=64, width=256, seed=0, fabrics=2)
    eval_data = make_woven_dataset(tmp_path / "eval", n_defect=4, n_good=2, height=64, width=256, seed=5,
                                   fabrics=2) if separate_eval else None
    fabric = {r["id"]: r["fabric_type"] for r in csv.DictReader((data / "manifest.csv").open())}
    cfg = load_config(BenchmarkConfig, PROFILE, data_dir=str(data), eval_data=str(eval_data) if eval_data else None,
                      output_dir=str(tmp_path / "out"), max_images=None, tasks=["segmenter"],
                      segmenter={**SEG, "steps": 2}, synthetic_counts=[2], leave_out=None, label_noise=None,
                      generators=[{"name": "real_only", "class_path": "real_only"},
                                  {"name": "copy_paste", "class_path": "copy_paste", "init_args": {}}],
                      new_fabric={"targets": ["woven_00"]})
    report = run_benchmark(cfg)
    out = tmp_path / "out"
    assert report["run"]["cells_failed"] == 0
    assert {c.name for u in plan(cfg) for c in u.cells} >= {"segmenter-new_woven_00-copy_paste-n2-f0-s1",
                                                           "segmenter-new_woven_00-real_only-n0-f0-s2"}
    base = out / "work" / "f0" / "new_woven_00"
    trained = _ids_of(base / "pool", "images")
    assert trained and all(fabric[i] != "woven_00" for i in trained)  # no target defect image trains
    assert {fabric[i] for i in _ids_of(base / "pool", "good")} == {"woven_00", "woven_01"}
    sources = {json.loads(p.read_text())["source_image"]
               for p in (base / "copy_paste" / "s0" / "gen" / "sidecars").glob("*.json")}
    assert sources and all(fabric[Path(s).stem] == "woven_00" for s in sources)  # synthesised onto the target
    cell = _cell(out, "segmenter-new_woven_00-copy_paste-n2-f0-s0")
    src = eval_data or data
    src_fabric = {r["id"]: r["fabric_type"] for r in csv.DictReader((src / "manifest.csv").open())}
    expected = {i for i in _ids_of(src, "images") if src_fabric[i] == "woven_00"}
    evaluated = set(cell["eval_source"]["eval_ids"])  # every target defect image + a share of its clean images
    assert cell["eval_source"]["kind"] == "new_fabric" and expected <= evaluated
    assert all(src_fabric[i] == "woven_00" for i in evaluated)
    if eval_data is None:  # the clean images painted onto are never evaluated
        assert not evaluated & sources_ids(sources)
    assert cell["metrics"]["images"] == len(evaluated) and "pixel_ap_macro" in cell["metrics"]
    md = (out / "results.md").read_text()
    assert "## New fabric `woven_00`" in md and "/3 > 0)" in md
    with pytest.raises(DataError, match="no defect image of new_fabric target 'woven_09'"):
        run_benchmark(load_config(BenchmarkConfig, PROFILE, **{**{k: getattr(cfg, k) for k in (
            "data_dir", "eval_data", "tasks", "segmenter", "synthetic_counts", "generators")},
            "output_dir": str(tmp_path / "out2"), "max_images": None, "leave_out": None, "label_noise": None,
            "new_fabric": {"targets": ["woven_09"]}}))


def test_lock_is_exclusive_and_a_dead_owner_is_taken_over(tmp_path):
    lock = tmp_path / "locks" / "unit.lock"
    assert _claim(lock) and not _claim(lock)
    lock.write_text(f"{2 ** 22 + 12345}@{os.uname().nodename}")  # no such pid
    assert _claim(lock)
    assert lock.read_text().startswith(f"{os.getpid()}@")


@pytest.mark.parametrize("profile", ["aitex_quick", "aitex_cpu", "aitex_cpu_quick", "aitex_cpu_holdout",
                                     "aitex_cpu_new_fabric", "aitex_cpu_rtdetr", "aitex_gpu", "aitex_gpu_sd2"])
def test_profiles_load_and_every_sub_config_is_valid(profile, tmp_path):
    from defectfill.config import GenerateConfig
    from defectfill.detect.rtdetr import DetectorConfig
    from defectfill.downstream.segmenter import SegmenterConfig
    from defectfill.generators import import_class

    cfg = load_config(BenchmarkConfig, REPO / "configs" / "benchmark" / f"{profile}.yaml")
    if cfg.new_fabric and cfg.new_fabric.get("targets") == "all" and not (Path(cfg.data_dir) / "manifest.csv").is_file():
        pytest.skip(f"{profile}: new_fabric targets 'all' are read from {cfg.data_dir}/manifest.csv (absent)")
    units = plan(cfg)
    tasks = {"aitex_quick": {"segmenter", "rtdetr", "openset"}, "aitex_cpu_holdout": {"segmenter", "openset"},
             "aitex_cpu_new_fabric": {"segmenter"}, "aitex_cpu_rtdetr": {"rtdetr"}}.get(profile, {"segmenter"} if profile.startswith("aitex_cpu") else {"segmenter", "rtdetr"})
    assert {c.task for u in units for c in u.cells} == tasks
    every_fabric = {f"new_fabric_0{i}" for i in (0, 1, 2, 3, 4, 6)}
    settings = {"aitex_cpu": {"main", "fewshot1", "fewshot3"} | every_fabric,
                "aitex_gpu": {"main", "fewshot1", "fewshot3"} | every_fabric,
                "aitex_cpu_quick": {"main", "fewshot3"}, "aitex_cpu_holdout": {"main", "without_nep"},
                "aitex_cpu_rtdetr": {"main"},
                "aitex_gpu_sd2": {"main", "new_fabric_02", "new_fabric_03", "without_nep"},
                "aitex_quick": {"main", "without_broken_yarn"}}.get(profile, {"main", "new_fabric_02", "new_fabric_03"})
    assert {u.data for u in units} == settings
    if "openset" in tasks:  # only where a defect type is left out (the unknown class)
        assert {u.data for u in units if any(c.task == "openset" for c in u.cells)} == {f"without_{cfg.leave_out['defect_type']}"}
    controls = {"shade", "noise_blob"} if profile in ("aitex_cpu", "aitex_cpu_quick", "aitex_cpu_rtdetr", "aitex_gpu") \
        else set()
    gans = {"dgt", "r3gan"} if profile == "aitex_quick" else {"multistage", "dgt"} if profile == "aitex_cpu_new_fabric" \
        else set() if profile in ("aitex_cpu_quick", "aitex_cpu_rtdetr") else {"multistage", "dgt", "r3gan"}
    assert {u.spec["class_path"] for u in units} == {"real_only", "copy_paste", "defectfill"} | controls | gans
    load_config(SegmenterConfig, **cfg.segmenter)
    detector = {k: v for k, v in cfg.detector.items() if k not in ("steps", "eval_good_tiles_per_image")}
    load_config(DetectorConfig, **detector)
    for g in cfg.generators:
        if g["class_path"] == "real_only":
            continue
        init_args = dict(g["init_args"])
        if init_args.get("model", "").startswith("sd2-community/"):  # a hub id: not downloaded in tests
            init_args["model"] = str(tmp_path / "tiny-sd2-inpainting")
        import_class(g["class_path"]).check_init_args(init_args)
        if g["class_path"] == "defectfill":
            values = {**cfg.generate, **(g.get("generate") or {})}
            GenerateConfig(checkpoint="lora", clean_dir="clean", **values).validate()


def test_job_peak_memory_is_the_jobs_own(tmp_path):
    """A job that allocates ~200 MiB reports about that, not the parent's high-water mark: the parent
    holds ~400 MiB when it starts the job (ru_maxrss from wait4 would carry those into the child)."""
    import numpy as np

    from defectfill.benchmark import worker

    ballast = np.ones(400 * 2**20 // 8)  # the parent's RSS at fork
    assert worker.own_peak_rss_kib() >= ballast.nbytes // 1024
    import subprocess
    import sys

    code = ("import numpy as np; from defectfill.benchmark.worker import own_peak_rss_kib; "
            "a = np.ones(200 * 2**20 // 8); print(own_peak_rss_kib())")
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 200 * 1024 < peak < 390 * 1024


def test_detection_evaluation_folders_use_the_grids_box_rule(woven_root, tmp_path):
    from defectfill.benchmark.runner import MAIN, Context
    from defectfill.data.masks import mask_components
    from defectfill.detect.dataset import iter_tiles

    def folder(detector):
        cfg = load_config(BenchmarkConfig, data_dir=str(woven_root), folds=2, val_fraction=0.25, tasks=["rtdetr"],
                          output_dir=str(tmp_path / str(len(detector))), detector={"steps": 1, **detector},
                          generators=[{"name": "real_only", "class_path": "real_only"}], seeds=[0, 1])
        ctx = Context(cfg, Path(cfg.output_dir))
        data_yaml = Path(ctx.eval_detection(MAIN, 0)["all"])
        return ctx, json.loads((data_yaml.parent / "manifest.json").read_text())

    ctx, plain = folder({})
    _, grown = folder({"merge_gap": 8, "min_box_side": 16, "min_box_area": 50})
    assert (plain["merge_gap"], plain["min_box_side"]) == (0, 1) and (grown["merge_gap"], grown["min_box_side"]) == (8, 16)
    assert grown["min_box_area"] == 1  # evaluation keeps every defect, however small
    boxes = [b for r in grown["tiles"] for b in r["boxes"]]
    assert boxes and all(b[2] - b[0] >= 16 and b[3] - b[1] >= 16 for b in boxes)
    # independently: the plain folder's boxes are the components of the evaluation masks, tile by tile
    expected = 0
    for mask_path in sorted((ctx.eval_dir_for(0) / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_path).convert("L")) >= 128
        for _, _, _, m in iter_tiles(np.zeros(mask.shape, np.uint8), mask, 256):
            expected += len(mask_components(m))
    assert sum(len(r["boxes"]) for r in plain["tiles"]) == expected
    assert sum(len(r["boxes"]) for r in grown["tiles"]) <= expected  # merged, never more
