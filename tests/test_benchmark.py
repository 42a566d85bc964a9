"""Benchmark runner: the quick profile on the procedural set, paired deltas, report files, resume."""

import json
import math
import time
from pathlib import Path

import pytest

from defectfill.benchmark.runner import BenchmarkConfig, benchmark_main, run_benchmark
from defectfill.config import load_config

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "benchmark" / "aitex_quick.yaml"


def _cfg(woven_root, tiny_model_dir, out):
    return load_config(BenchmarkConfig, PROFILE, data_dir=str(woven_root), output_dir=str(out),
                       model=str(tiny_model_dir), max_images=None,
                       segmenter={"steps": 6, "size": 64, "crop": 64, "batch_size": 4, "base_channels": 8,
                                  "depth": 3, "log_every": 3},
                       synthetic_counts=[2])


@pytest.fixture(scope="module")
def bench(woven_root, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = _cfg(woven_root, tiny_model_dir, out)
    report = run_benchmark(cfg)
    return cfg, out, report


def test_results_have_every_cell_and_finite_stats(bench):
    cfg, out, report = bench
    results = json.loads((out / "results.json").read_text())
    names = {g["name"] for g in cfg.generators}
    assert names == {"real_only", "copy_paste", "dgt", "defectfill"}
    expected = {f"real_only-n0-s{s}" for s in cfg.seeds}
    expected |= {f"{g}-n2-s{s}" for g in names - {"real_only"} for s in cfg.seeds}
    assert set(results["cells"]) == expected
    assert all((out / "cells" / c / "result.json").is_file() for c in expected)
    assert len(results["rows"]) == 4
    for row in results["rows"]:
        assert row["seeds"] == [0, 1, 2]
        for m in ("pixel_ap", "pixel_f1@0.5", "tile_auroc"):
            assert math.isfinite(row[m]["mean"]) and math.isfinite(row[m]["std"]), (row["generator"], m)
            assert math.isfinite(row[f"delta_{m}"]["mean"])
        if row["generator"] != "real_only":
            assert row["fit_generate_seconds"]["mean"] > 0
    assert results["eval_source"][0]["kind"] == "held_out_split"
    md = (out / "results.md").read_text()
    assert "HELD-OUT split" in md and "Fallbacks" in md and "dgt" in md
    assert (out / "pixel_ap.png").stat().st_size > 1000


def test_delta_is_paired_per_seed(bench):
    _, out, _ = bench
    results = json.loads((out / "results.json").read_text())
    row = next(r for r in results["rows"] if r["generator"] == "copy_paste")
    cell = lambda name: json.loads((out / "cells" / name / "result.json").read_text())["metrics"]  # noqa: E731
    by_hand = {s: cell(f"copy_paste-n2-s{s}")["pixel_ap"] - cell(f"real_only-n0-s{s}")["pixel_ap"] for s in (0, 1, 2)}
    for s, d in by_hand.items():
        assert row["delta_pixel_ap"]["per_seed"][str(s)] == pytest.approx(d, abs=1e-12)
    mean = sum(by_hand.values()) / 3
    assert row["delta_pixel_ap"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert row["delta_pixel_ap"]["std"] == pytest.approx(
        math.sqrt(sum((d - mean) ** 2 for d in by_hand.values()) / 2), abs=1e-12)
    # the same segmenter budget and real data everywhere in a seed
    c0, r0 = (json.loads((out / "cells" / n / "result.json").read_text()) for n in ("dgt-n2-s1", "real_only-n0-s1"))
    assert c0["segmenter_steps"] == r0["segmenter_steps"] == 6
    assert c0["train_real_images"] == r0["train_real_images"] and c0["synthetic_used"] == 2
    assert r0["synthetic_used"] == 0


def test_second_run_skips_every_cell(bench, woven_root, tiny_model_dir):
    cfg, out, _ = bench
    files = sorted((out / "cells").glob("*/result.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    start = time.perf_counter()
    rc = benchmark_main(["--config", str(PROFILE), "--output-dir", str(out), "--set", f"data_dir={woven_root}",
                         "--set", f"model={tiny_model_dir}", "--set", "max_images=null", "--set",
                         "synthetic_counts=[2]", "--set",
                         "segmenter={steps: 6, size: 64, crop: 64, batch_size: 4, base_channels: 8, depth: 3}"])
    assert rc == 0
    assert time.perf_counter() - start < 15
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    report = run_benchmark(cfg)
    assert report["run"] == {"cells_run": 0, "cells_skipped": len(files)}
