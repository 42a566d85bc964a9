"""Realism probe (classifier two-sample test): AUC against closed forms, and on tiny image folders."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from defectfill.metrics.probe import realism_probe, two_sample_auc


def test_auc_matches_the_gaussian_closed_form():
    # real ~ N(0, 1), synthetic ~ N(d, 1) in one dimension: the best classifier's AUC is Phi(d / sqrt 2)
    rng = np.random.default_rng(0)
    d, n = 1.0, 3000
    res = two_sample_auc(rng.normal(0, 1, (n, 1)), rng.normal(d, 1, (n, 1)), seed=0)
    expected = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt 2)
    assert res["auc"] == pytest.approx(expected, abs=0.015)
    assert res["n_real"] == res["n_synthetic"] == n and res["folds"] == 5 and len(res["scores"]) == n


def test_auc_is_chance_for_one_distribution_and_one_for_separable_sets():
    rng = np.random.default_rng(1)
    same = two_sample_auc(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    assert abs(same["auc"] - 0.5) < 0.07
    apart = two_sample_auc(rng.normal(size=(30, 8)), rng.normal(size=(20, 8)) + 10)
    assert apart["auc"] == 1.0
    few = two_sample_auc(rng.normal(size=(3, 8)), rng.normal(size=(30, 8)))
    assert few["auc"] is None and few["scores"] is None
    with pytest.raises(ValueError, match="differ"):
        two_sample_auc(rng.normal(size=(10, 8)), rng.normal(size=(10, 4)))


class MeanStdFeatures(torch.nn.Module):
    """A transparent stand-in extractor: mean and std of each crop."""

    num_features = 2
    name = label = "mean/std"
    input_size = 32
    standard = False

    def forward(self, x):
        x = x.float()
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], 1)


def _scene(rng, value, size=64):
    img = rng.normal(128, 6, (size, size)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    y = int(rng.integers(16, 48))
    mask[y:y + 3, 8:56] = True
    img[mask] = value
    return img, mask


def _write_generated(root, scenes, defect_class):
    for sub in ("images", "masks", "sidecars", "clean"):
        (root / sub).mkdir(parents=True)
    for k, (img, mask) in enumerate(scenes):
        Image.fromarray(img).save(root / "images" / f"g{k:03d}.png")
        Image.fromarray(np.where(mask, 128, img).astype(np.uint8)).save(root / "clean" / f"g{k:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"g{k:03d}.png")
        (root / "sidecars" / f"g{k:03d}.json").write_text(json.dumps({"defect_class": defect_class}))


def test_probe_tells_a_wrong_defect_from_a_faithful_one(tmp_path):
    rng = np.random.default_rng(2)
    ref = tmp_path / "ref"
    (ref / "images").mkdir(parents=True)
    (ref / "masks").mkdir()
    rows = ["id,defect_type"]
    for k in range(24):
        img, mask = _scene(rng, 60)  # real defects: dark threads
        Image.fromarray(img).save(ref / "images" / f"r{k:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(ref / "masks" / f"r{k:02d}.png")
        rows.append(f"r{k:02d},{'thread' if k % 2 else 'nep'}")
    (ref / "manifest.csv").write_text("\n".join(rows) + "\n")
    _write_generated(tmp_path / "faithful", [_scene(rng, 60) for _ in range(24)], "thread")
    _write_generated(tmp_path / "bright", [_scene(rng, 230) for _ in range(24)], "thread")

    faithful = realism_probe([tmp_path / "faithful"], ref, crop=32, extractor=MeanStdFeatures(), worst=3)
    bright = realism_probe([tmp_path / "bright"], ref, crop=32, extractor=MeanStdFeatures(), worst=3)
    assert faithful["auc"] < 0.75 and bright["auc"] == 1.0
    assert bright["kid_mean"] > 10 * abs(faithful["kid_mean"])  # KID agrees: far vs near
    # the probe's KID (from its own features) is frechet_kid of the same crops
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.metrics import crop_around_masks, frechet_kid, load_dataset_crops

    real = [crop_around_masks(s.image, s.mask, 32)[0] for s in load_reference_dataset(ref).samples]
    direct = frechet_kid(real, list(load_dataset_crops(tmp_path / "bright", 32).images), MeanStdFeatures())
    assert bright["kid_mean"] == pytest.approx(direct["kid_mean"], rel=1e-9)
    # the clean images (no defect) are far from the real dark threads; the faithful defect closes the gap
    assert faithful["context_auc"] > 0.9 and faithful["realism_gain"] > 0.2
    assert bright["realism_gain"] <= 0.1
    assert bright["n_real"] == 24 and bright["n_synthetic"] == 24 and bright["extractor"] == "mean/std"
    assert set(bright["per_type"]) == {"thread"} and bright["per_type"]["thread"]["n_real"] == 12
    assert bright["per_type"]["thread"]["auc"] == 1.0
    assert len(bright["most_synthetic"]) == 3
    scores = [m["score"] for m in bright["most_synthetic"]]
    assert scores == sorted(scores, reverse=True)
