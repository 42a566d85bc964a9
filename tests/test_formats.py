"""The one image reader at every bit depth, the output checks, and the LoRA/base compatibility check."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectfill.data.masks import binarize_mask
from defectfill.errors import DataError, OutputError, check_writable, output_errors
from defectfill.formats.images import read_image, read_mask


def _ramp16(h=16, w=64) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * (65535 // (h * w - 1))).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_reads_at_its_true_value(tmp_path, suffix):
    a = _ramp16()
    Image.fromarray(a).save(tmp_path / f"a{suffix}")
    got = read_image(tmp_path / f"a{suffix}")
    assert got.dtype == np.uint8 and got.shape == a.shape
    assert np.array_equal(got, np.rint(a / 257.0).astype(np.uint8))  # 65535 -> 255, linear
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200  # not clipped to white
    rgb = read_image(tmp_path / f"a{suffix}", "RGB")
    assert rgb.shape == (*a.shape, 3) and np.array_equal(rgb[..., 1], got)


def test_8bit_files_are_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    grey, rgb = rng.integers(0, 256, (9, 11), dtype=np.uint8), rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), grey)
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "c.png", "L"), np.asarray(Image.fromarray(rgb).convert("L")))


def test_float_image_in_unit_range_is_scaled(tmp_path):
    a = np.linspace(0, 1, 40, dtype=np.float32).reshape(4, 10)
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    assert np.array_equal(read_image(tmp_path / "f.tif"), np.rint(a * 255).astype(np.uint8))


def test_16bit_soft_mask_is_thresholded_relative_to_its_range(tmp_path):
    m = np.zeros((8, 8), np.uint16)
    m[0, :4] = [128, 32767, 32896, 65535]  # on the 0..255 scale: 0.498, 127.498, 128.0 (= 128 * 257), 255
    Image.fromarray(m).save(tmp_path / "m.png")
    got = read_mask(tmp_path / "m.png")
    assert got[0, :4].tolist() == [False, False, True, True] and got.sum() == 2
    assert read_mask(tmp_path / "m.png", threshold=1)[0, :4].tolist() == [False, True, True, True]
    assert binarize_mask(m, 128)[0, :4].tolist() == [False, False, True, True]  # uint16 arrays: same scale


def test_truncated_and_garbage_files_name_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "g.png").write_bytes(b"nonsense")
    for name in ("t.png", "g.png"):
        with pytest.raises(DataError, match=name):
            read_image(tmp_path / name)
        with pytest.raises(DataError, match=name):
            read_mask(tmp_path / name)


def _dataset_pair(tmp_path: Path) -> tuple[Path, Path]:
    """The same tiny reference folder written as 8-bit and as 16-bit PNGs."""
    rng = np.random.default_rng(1)
    grey = rng.integers(20, 230, (64, 96), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[20:30, 40:60] = 255
    good = rng.integers(20, 230, (64, 96), dtype=np.uint8)
    roots = []
    for bits in (8, 16):
        root = tmp_path / f"d{bits}"
        for sub in ("images", "masks", "good"):
            (root / sub).mkdir(parents=True)
        as_bits = (lambda a: a.astype(np.uint16) * 257) if bits == 16 else (lambda a: a)
        for name, img, msk in (("a", grey, mask), ("b", grey[::-1], mask[:, ::-1])):
            Image.fromarray(as_bits(img)).save(root / "images" / f"{name}.png")
            Image.fromarray(as_bits(msk)).save(root / "masks" / f"{name}.png")
        Image.fromarray(as_bits(good)).save(root / "good" / "g.png")
        roots.append(root)
    return roots[0], roots[1]


def test_16bit_reference_data_trains_detects_and_segments_like_8bit(tmp_path):
    from defectfill.data.datasets import CleanCropSampler, load_reference_dataset
    from defectfill.detect.dataset import build_detection_dataset
    from defectfill.downstream.tiles import images_from_reference

    d8, d16 = _dataset_pair(tmp_path)
    r8, r16 = load_reference_dataset(d8), load_reference_dataset(d16)  # training's reader
    assert r16.grayscale and np.array_equal(r8.samples[0].image, r16.samples[0].image)
    assert np.array_equal(r8.samples[0].mask, r16.samples[0].mask) and r16.samples[0].mask.sum() == 200
    c8 = CleanCropSampler(r8.good_paths, 32, 32, seed=0).batch(0, 0, 2)
    c16 = CleanCropSampler(r16.good_paths, 32, 32, seed=0).batch(0, 0, 2)
    assert np.array_equal(c8.numpy(), c16.numpy())
    s8, s16 = images_from_reference(d8), images_from_reference(d16)  # the segmenter's reader
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(s8, s16))
    for root in (d8, d16):  # the detection dataset's reader
        build_detection_dataset(root, tmp_path / f"det-{root.name}", tile=32, val_fraction=0.5)
    tiles8 = sorted((tmp_path / "det-d8").rglob("*.png"))
    tiles16 = sorted((tmp_path / "det-d16").rglob("*.png"))
    assert len(tiles8) == len(tiles16) > 0
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(tiles8, tiles16))
    labels8 = sorted((tmp_path / "det-d8").rglob("*.txt"))
    assert [p.read_text() for p in labels8] == [p.read_text() for p in sorted((tmp_path / "det-d16").rglob("*.txt"))]


def test_16bit_clean_images_generate_like_8bit(tmp_path):
    from defectfill.config import GenerateConfig
    from defectfill.generation.run import SlotPlanner

    d8, d16 = _dataset_pair(tmp_path)
    slots = []
    for root in (d8, d16):
        cfg = GenerateConfig(generator="copy_paste", clean_dir=str(root / "good"), reference_dir=str(d8),
                             output_dir=str(tmp_path / "out"), num_samples=1)
        planner = SlotPlanner(cfg, {})
        planner.check()
        slots.append(planner.slot(0))
    assert slots[1].clean.dtype == np.uint8 and np.array_equal(slots[0].clean, slots[1].clean)
    assert np.array_equal(slots[0].mask, slots[1].mask)


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="existing file"):
        check_writable(tmp_path / "file")
    with pytest.raises(OutputError, match="is a file"):
        check_writable(tmp_path / "file" / "run")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no probe left behind


def test_output_errors_turn_write_failures_into_one_line(tmp_path):
    with pytest.raises(OutputError) as info:
        with output_errors(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))
    msg = str(info.value)
    assert "x.png" in msg and "free disk space" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError):  # reading errors are not output errors
        with output_errors(tmp_path):
            raise FileNotFoundError(errno.ENOENT, "nope", "in.png")


def test_lora_base_mismatch_reads_widths_from_headers():
    from defectfill.diffusion.models.lora import lora_base_mismatch

    unet = {"block_out_channels": [32, 64], "cross_attention_dim": 32}
    fits = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 32),
            "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.lora_A.weight": (4, 64),
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 64),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": (64, 4),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, 32),
            "<v*>": (32,)}
    assert lora_base_mismatch(fits, unet, 32) is None
    assert "attn2.to_k" in lora_base_mismatch(fits, {**unet, "cross_attention_dim": 1024}, 32)
    assert "to_q" in lora_base_mismatch(fits, {**unet, "block_out_channels": [320, 640]}, 32)
    assert lora_base_mismatch(fits, unet, 1024).startswith(("learned token", "text_encoder"))


def test_generation_refuses_a_lora_of_another_base_before_loading(tmp_path, tiny_model_dir, woven_root):
    """A real LoRA (trained on the tiny model) against a base whose configs say wider layers."""
    import json

    from defectfill.config import GenerateConfig
    from defectfill.diffusion.models.lora import (
        add_lora,
        add_placeholder_token,
        attach_placeholder_embedding,
        save_defectfill_lora,
    )
    from defectfill.diffusion.models.pipeline import load_training_components
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer
    from defectfill.errors import ModelError

    parts = load_training_components(str(tiny_model_dir))
    token_id = add_placeholder_token(parts.tokenizer, parts.text_encoder, "<v*>", "defect")
    add_lora(parts.unet, parts.text_encoder, 4)
    attach_placeholder_embedding(parts.text_encoder, token_id)
    lora = save_defectfill_lora(tmp_path / "lora", parts.unet, parts.text_encoder, "<v*>", token_id,
                                {"base_model": str(tiny_model_dir), "defect_prompt": "A photo of <v*>",
                                 "resolution": 64, "crop_size": 128, "data_dir": str(woven_root)})
    cfg = GenerateConfig(lora_dir=str(lora), clean_dir=str(woven_root / "good"), output_dir=str(tmp_path / "o"))
    DefectFillSynthesizer.check(cfg)  # its own base fits
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 1024}))
    cfg.model = str(other)
    with pytest.raises(ModelError, match="does not fit base model"):
        DefectFillSynthesizer.check(cfg)
