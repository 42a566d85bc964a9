"""bench/experiments/compare_step_budget.py: paired changes between two runs of one grid, by hand."""

from __future__ import annotations

import importlib.util

import pytest


def _module():
    return importlib.import_module("bench.experiments.compare_step_budget")


def _cell(setting, generator, fold, seed, ap, recall=0.5):
    return {"task": "segmenter", "setting": setting, "generator": generator, "fold": fold, "seed": seed,
            "evaluations": {"all": {"pixel_ap": ap, "image_recall@fa5": recall}}}


def test_paired_change_real_data_response_and_delta_by_hand():
    m = _module()
    a = m.keyed([_cell("main", "real_only", 0, 0, 0.10), _cell("main", "real_only", 1, 0, 0.30),
                 _cell("main", "shade", 0, 0, 0.05), _cell("fewshot3", "real_only", 0, 0, 0.12),
                 _cell("fewshot3", "real_only", 1, 0, 0.20), _cell("new_fabric_01", "shade", 0, 0, 0.4)])
    b = m.keyed([_cell("main", "real_only", 0, 0, 0.20), _cell("main", "real_only", 1, 0, 0.25),
                 _cell("main", "shade", 0, 0, 0.15), _cell("main", "shade", 1, 0, 0.9)])
    rows = {(r["family"], r["generator"]): r for r in m.paired_change(a, b)}
    assert set(rows) == {("main", "real_only"), ("main", "shade")}  # families both runs have
    ro = rows[("main", "real_only")]["pixel_ap"]
    assert (ro["a"], ro["b"], ro["b_minus_a"], ro["rose"], ro["n"]) == pytest.approx((0.2, 0.225, 0.025, 1, 2))
    assert rows[("main", "shade")]["n"] == 1  # only fold 0 is in both runs
    response = m.real_data_response(a)["fewshot3"]  # main - fewshot3: -0.02 and +0.10
    assert response["main_minus_fewshot"] == pytest.approx(0.04) and (response["main_higher"], response["n"]) == (1, 2)
    delta = m.delta_vs_real_only(b)[("main", "shade")]  # 0.15 - 0.20 and 0.9 - 0.25
    assert delta["mean"] == pytest.approx((-0.05 + 0.65) / 2) and (delta["positive"], delta["n"]) == (1, 2)
    assert m.delta_vs_real_only(a)[("new_fabric", "shade")]["n"] == 0  # no real-only cell for that fabric
    text = m.markdown({"a": "A", "b": "B", "label_a": "600", "label_b": "1200", "paired": m.paired_change(a, b),
                       "real_data_a": m.real_data_response(a), "real_data_b": {},
                       "delta_a": {"|".join(k): v for k, v in m.delta_vs_real_only(a).items()},
                       "delta_b": {"|".join(k): v for k, v in m.delta_vs_real_only(b).items()}})
    assert "| main | real_only | 2 | 0.200 | 0.225 | +0.025 | 1/2 |" in text
    assert "| fewshot3 | +0.040 (main higher in 1/2) | – |" in text
