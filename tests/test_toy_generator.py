"""A generator defined only here goes through the registry like the shipped ones: `defectfill fit`,
`defectfill generate` and the quick benchmark profile, with no change anywhere else."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from defectfill.generators import Generator

REPO = Path(__file__).resolve().parents[1]
CLASS_PATH = "tests.test_toy_generator:ToyGenerator"


class ToyGenerator(Generator):
    """Learns one number, the mean grey-level drop inside the reference masks, and darkens the mask by it."""

    name = "toy"
    preserves_background = True

    def __init__(self, scale: float = 1.0, drop: float | None = None):
        self.scale, self.drop = float(scale), drop

    def fit(self, dataset, output_dir, seed=0):
        drops = []
        for sample in dataset.samples:
            image = np.asarray(sample.image, dtype=np.float64)
            image = image.mean(axis=2) if image.ndim == 3 else image
            drops.append(image[~sample.mask].mean() - image[sample.mask].mean())
        final = Path(output_dir) / "final"
        final.mkdir(parents=True, exist_ok=True)
        save_file({"drop": torch.tensor([self.scale * float(np.mean(drops))])}, str(final / "weights.safetensors"))
        (final / "seed.json").write_text(json.dumps({"seed": seed, "references": len(dataset.samples)}))
        return final

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", dilation=None, **kwargs):
        drop = float(load_file(str(Path(checkpoint) / "weights.safetensors"))["drop"][0])
        return cls(drop=drop)

    def synthesize(self, clean, mask, seed, defect_class=None, placement=None):
        rng = np.random.default_rng(seed)
        out = clean.astype(np.float64)
        m = mask if clean.ndim == 2 else mask[..., None]
        out = np.where(m, out - max(self.drop, 20.0) - rng.uniform(0, 5), out)
        return np.clip(np.rint(out), 0, 255).astype(clean.dtype), {"toy_drop": self.drop}


def test_toy_generator_through_fit_generate_and_the_quick_benchmark(woven_root, tmp_path, monkeypatch):
    from defectfill.benchmark.runner import BenchmarkConfig, run_benchmark
    from defectfill.cli import main
    from defectfill.config import load_config
    from defectfill.data.datasets import load_reference_dataset

    monkeypatch.chdir(REPO)  # the child processes import tests.test_toy_generator from the checkout
    spec = tmp_path / "toy.yaml"
    spec.write_text(yaml.safe_dump({"class_path": CLASS_PATH, "init_args": {"scale": 0.5}}))
    assert main(["fit", "--config", str(spec), "--data-dir", str(woven_root), "--output-dir", str(tmp_path / "fit"),
                 "--seed", "3", "--set", "scale=2.0"]) == 0
    final = tmp_path / "fit" / "final"
    dataset = load_reference_dataset(woven_root)
    expected = 2.0 * np.mean([np.asarray(s.image, float).reshape(*s.mask.shape, -1).mean(-1)[~s.mask].mean()
                              - np.asarray(s.image, float).reshape(*s.mask.shape, -1).mean(-1)[s.mask].mean()
                              for s in dataset.samples])  # --set overrides the YAML's scale
    assert float(load_file(str(final / "weights.safetensors"))["drop"][0]) == pytest.approx(expected, rel=1e-5)
    assert json.loads((final / "seed.json").read_text())["seed"] == 3
    info = json.loads((tmp_path / "fit" / "fit_info.json").read_text())
    assert info["checkpoint"] == str(final) and info["config"]["init_args"] == {"scale": 2.0}

    out = tmp_path / "gen"
    assert main(["generate", "--generator", CLASS_PATH, "--checkpoint", str(final), "--clean-dir",
                 str(woven_root / "good"), "--data-dir", str(woven_root), "--num-samples", "3",
                 "--output-dir", str(out)]) == 0
    sides = sorted((out / "sidecars").glob("*.json"))
    assert len(sides) == 3 and all(json.loads(p.read_text())["generator"] == "toy" for p in sides)

    quick = yaml.safe_load((REPO / "configs" / "benchmark" / "aitex_quick.yaml").read_text())
    cfg = load_config(BenchmarkConfig, REPO / "configs" / "benchmark" / "aitex_quick.yaml",
                      data_dir=str(woven_root), output_dir=str(tmp_path / "bench"), max_images=None,
                      tasks=["segmenter"], synthetic_counts=[2],
                      leave_out={"defect_type": "broken_yarn", "generators": ["toy"], "tasks": ["segmenter"]},
                      segmenter={"steps": 2, "size": 32, "crop": 32, "batch_size": 2, "log_every": 1},
                      generators=[{"name": "toy", "class_path": CLASS_PATH, "init_args": {"scale": 1.0}},
                                  {"name": "r3gan", "class_path": "r3gan",  # the quick profile's own R3GAN row
                                   "init_args": next(g for g in quick["generators"] if g["name"] == "r3gan")["init_args"]}])
    report = run_benchmark(cfg)
    assert report["run"]["cells_failed"] == 0
    cells = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "cells").glob("*-toy-*/result.json")]
    assert len(cells) == 2 * len(cfg.seeds) and all(c["generator_class"] == CLASS_PATH for c in cells)
    assert all(c["generator_run"]["generated_samples"] == 2 for c in cells)
    r3gan = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "cells").glob("*-main-r3gan-*/result.json")]
    assert len(r3gan) == len(cfg.seeds) and all(c["generator_run"]["boundary_realism"]["n_generated"] > 0
                                               for c in r3gan)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "generators").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_generator_configs_resolve(path, monkeypatch):
    """Every `defectfill fit` example config names a registered class whose init_args pass its checks."""
    from defectfill.config import load_config
    from defectfill.generators import FitConfig, import_class

    monkeypatch.chdir(REPO)
    cfg = load_config(FitConfig, path, data_dir="unused")
    cls = import_class(cfg.class_path)
    cls.check_init_args(cfg.init_args)
    assert cls.from_init_args(dict(cfg.init_args)) is not None


def test_fit_reports_bad_init_args_before_training(woven_root, tmp_path, capsys):
    from defectfill.cli import main

    assert main(["fit", "--generator", "dgt", "--set", "max_stepz=3", "--data-dir", str(woven_root),
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert "max_stepz" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["fit", "--generator", "no.such:Thing", "--data-dir", str(woven_root),
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert "no.such:Thing" in capsys.readouterr().err
