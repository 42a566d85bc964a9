"""Every generator (DefectFill and the baselines) through one writer and the same dataset checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage

from defectfill.config import GenerateConfig, load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.generation.run import run_generation

REPO = Path(__file__).resolve().parents[1]
GAN_OVERRIDES = {"max_steps": 2, "batch_size": 2, "checkpointing_steps": 100, "sample_every": 100, "log_every": 1}


def shipped_init_args(name: str) -> dict:
    """The init_args of configs/generators/<name>.yaml."""
    return yaml.safe_load((REPO / "configs" / "generators" / f"{name}.yaml").read_text())["init_args"]


@pytest.fixture(scope="module")
def clean_dir(woven_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("common-clean")
    for p in sorted((woven_root / "good").glob("*.png"))[:2]:
        Image.open(p).crop((0, 0, 256, 128)).save(out / p.name)
    return out


@pytest.fixture(scope="module")
def checkpoints(woven_root, tiny_model_dir, tmp_path_factory):
    """A briefly fitted checkpoint of each generator, on the procedural reference set."""
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.diffusion.trainer import train as train_defectfill
    from gan_baselines.copy_paste import CopyPasteConfig, CopyPasteGenerator
    from gan_baselines.dgt.train import DGTConfig
    from gan_baselines.dgt.train import train as train_dgt
    from gan_baselines.multistage.train import MultistageConfig
    from gan_baselines.multistage.train import train as train_multistage

    tmp = tmp_path_factory.mktemp("common-fit")
    data = str(woven_root)
    out = {}
    out["copy_paste"] = CopyPasteGenerator(CopyPasteConfig(data_dir=data)).fit(load_reference_dataset(data),
                                                                                 tmp / "copy_paste")
    out["dgt"] = train_dgt(load_config(DGTConfig, data_dir=data, output_dir=str(tmp / "dgt"),
                                       **{**shipped_init_args("dgt"), **GAN_OVERRIDES}))
    out["multistage"] = train_multistage(load_config(
        MultistageConfig, data_dir=data, output_dir=str(tmp / "multistage"),
        **{**shipped_init_args("multistage"), **GAN_OVERRIDES}))
    out["defectfill"] = train_defectfill(load_config(
        DefectFillTrainConfig, REPO / "configs/defectfill/tiny.yaml", model=str(tiny_model_dir), data_dir=data,
        output_dir=str(tmp / "defectfill"), max_train_steps=2, checkpointing_steps=100))
    return out


@pytest.fixture(scope="module")
def datasets(checkpoints, clean_dir, woven_root, tmp_path_factory):
    out = {}
    for name, ckpt in checkpoints.items():
        cfg = GenerateConfig(generator=name, checkpoint=None if name == "defectfill" else str(ckpt),
                             lora_dir=str(ckpt) if name == "defectfill" else "", clean_dir=str(clean_dir),
                             masks="auto", reference_dir=str(woven_root), num_samples=2, candidates=2,
                             num_inference_steps=2, min_change=0.0, dilation=6,
                             output_dir=str(tmp_path_factory.mktemp("common-gen") / name))
        out[name] = (Path(cfg.output_dir), run_generation(cfg))
    return out


def test_every_generator_writes_the_same_complete_format(datasets):
    for name, (root, summary) in datasets.items():
        assert summary["samples"] == 2, name
        for f in ("data.yaml", "annotations.json", "contact_sheet.png", "run_info.json"):
            assert (root / f).is_file(), f"{name}: {f}"
        for side_path in sorted((root / "sidecars").glob("*.json")):
            side = json.loads(side_path.read_text())
            assert side["generator"] in (name, "multistage_gan"), side["generator"]
            result = np.asarray(Image.open(root / "images" / f"{side_path.stem}.png"))
            clean = np.asarray(Image.open(side["source_image"]))
            exported = np.asarray(Image.open(root / "masks" / f"{side_path.stem}.png")) > 0
            mask = mask_util.decode(side["requested_mask_rle"]).astype(bool)
            assert not (exported & ~mask).any(), f"{name}: a label outside the requested mask"
            assert side["visible_fraction"] == pytest.approx(exported.sum() / mask.sum()), name
            assert result.shape == clean.shape and result.dtype == np.uint8, name
            far = ndimage.distance_transform_edt(~mask) > 6
            assert np.array_equal(result[far], clean[far]), f"{name}: background changed outside the dilation"
            assert len((root / "labels" / f"{side_path.stem}.txt").read_text().splitlines()) == len(side["boxes"])


def test_every_generated_dataset_passes_ultralytics_and_coco_checks(datasets, tmp_path):
    from pycocotools.coco import COCO

    roots = [str(root / "data.yaml") for root, _ in datasets.values()]
    code = ("import sys, json; from defectfill.detect.offline import check_dataset_offline; "
            "print(json.dumps([check_dataset_offline(p)['nc'] for p in sys.argv[1:]]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "yolo"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", code, *roots], check=False, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ncs = json.loads(run.stdout.strip().splitlines()[-1])
    for (root, _), nc in zip(datasets.values(), ncs):
        coco = COCO(str(root / "annotations.json"))
        assert nc == len(coco.getCatIds()) and len(coco.getImgIds()) == 2
