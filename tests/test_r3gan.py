"""R3GAN baseline: identity-at-init residual blocks, the [1, 2, 1] resamplers, the variance
scaling initialisation, projection conditioning, an RpGAN-only generator loss, and a tiny fit ->
from_checkpoint -> synthesize round trip on the procedural woven set."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import ndimage

from defectfill.errors import ConfigError
from gan_baselines.losses import relativistic_g_loss
from gan_baselines.r3gan.generator import R3GANGenerator
from gan_baselines.r3gan.model import (
    ACTIVATION_GAIN,
    ProjectionDiscriminator,
    R3GANUNet,
    ResidualBlock,
    lowpass_downsample,
    lowpass_upsample,
    residual_blocks,
)
from gan_baselines.r3gan.train import R3GANConfig, fill_masked, train_step

REPO = Path(__file__).resolve().parents[1]
SMALL = yaml.safe_load((REPO / "configs" / "generators" / "r3gan.yaml").read_text())["init_args"]  # shipped, inline
TINY = {"crop_size": 32, "resolution": 32, "g_widths": [8, 16], "d_widths": [8, 16], "group_size": 8}


def tiny_nets(num_classes=3, channels=1, seed=0):
    torch.manual_seed(seed)
    g = R3GANUNet(channels, num_classes, [8, 16], blocks=2, expansion=2, group_size=8, noise_channels=1)
    d = ProjectionDiscriminator(channels, num_classes, 16, [8, 16], blocks=1, expansion=2, group_size=8)
    return g, d


def tiny_batch(n=4, channels=1, num_classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 16, 16)
    masks[:, :, 4:10, 5:12] = 1
    return {"real": torch.rand(n, channels, 16, 16, generator=gen) * 2 - 1, "masks": masks,
            "labels": torch.randint(0, num_classes, (n,), generator=gen),
            "clean": torch.rand(n, channels, 16, 16, generator=gen) * 2 - 1}


# ---- (a) zero-initialised residual branches ----

def test_residual_blocks_start_as_the_identity():
    block = ResidualBlock(16, expansion=2, group_size=8, n_blocks=4)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)
    assert torch.count_nonzero(block.conv3.weight) == 0
    g, d = tiny_nets()
    for block in residual_blocks(g) + residual_blocks(d):
        y = torch.randn(2, block.conv1.in_channels, 8, 8)
        assert torch.equal(block(y), y)
    stack = torch.nn.Sequential(*[ResidualBlock(16, 2, 8, 5) for _ in range(5)])
    assert torch.equal(stack(x), x)
    for stage in g.encoder:  # every stage of the built generator, too
        y = torch.randn(2, stage[0].conv1.in_channels, 8, 8)
        assert torch.equal(stage(y), y)


# ---- (b) the [1, 2, 1] low-pass filter ----

def test_lowpass_resampling():
    const = torch.full((2, 3, 8, 8), 0.37)
    assert torch.allclose(lowpass_downsample(const), torch.full((2, 3, 4, 4), 0.37))
    assert torch.allclose(lowpass_upsample(const), torch.full((2, 3, 16, 16), 0.37))
    # x[i, j] = 4i + j; outputs sit at rows / columns 0 and 2. Interior taps (1, 2, 3) of a linear
    # ramp average to the centre; at index 0 the replicated border gives (1·x0 + 2·x0 + 1·x1) / 4.
    x = torch.arange(16.0).view(1, 1, 4, 4)
    edge_i, edge_j = 4 * 0.25, 0.25  # row / column coordinate 0.25 at the border
    expected = torch.tensor([[edge_i + edge_j, edge_i + 2], [8 + edge_j, 8 + 2]])
    assert torch.allclose(lowpass_downsample(x)[0, 0], expected)
    assert torch.allclose(lowpass_downsample(x)[0, 0], torch.tensor([[1.25, 3.0], [8.25, 10.0]]))
    # upsampling is bilinear interpolation between the samples, the last one repeated
    row = lowpass_upsample(torch.tensor([[[[0.0, 1.0, 3.0]]]]))
    assert torch.allclose(row[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 3.0]))


# ---- (c) variance scaling ----

def test_variance_scaling_initialisation():
    torch.manual_seed(0)
    n_blocks = 8
    block = ResidualBlock(256, expansion=2, group_size=16, n_blocks=n_blocks)
    scale = n_blocks ** (-1 / (2 * 3 - 2))
    want1 = ACTIVATION_GAIN / math.sqrt(256) * scale
    want2 = ACTIVATION_GAIN / math.sqrt(16 * 9) * scale  # grouped 3x3: fan_in = group size · 9
    assert abs(block.conv1.weight.std().item() / want1 - 1) < 0.1
    assert abs(block.conv2.weight.std().item() / want2 - 1) < 0.1
    assert block.conv2.groups == 512 // 16
    g, d = tiny_nets()
    assert {b.variance_scaling for b in residual_blocks(g)} == {len(residual_blocks(g))} == {2 * 3}
    assert {b.variance_scaling for b in residual_blocks(d)} == {len(residual_blocks(d))} == {2}


# ---- (d) projection conditioning ----

def test_projection_conditioning():
    _, d = tiny_nets()
    with torch.no_grad():  # non-zero residual branches, so the check covers the whole network
        for b in residual_blocks(d):
            b.conv3.weight.normal_(0, 0.1)
    x = tiny_batch(n=2)
    image, mask = x["real"], x["masks"]
    h = d.features(image, mask)
    for c in range(3):
        labels = torch.full((2,), c)
        by_hand = (h @ d.linear.weight[0] + d.linear.bias[0]) + (d.embed.weight[c] * h).sum(1)
        assert torch.allclose(d(image, mask, labels), by_hand, atol=1e-6)
    logits = [d(image, mask, torch.full((2,), c)) for c in range(3)]
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(logits[1], logits[2])


# ---- (e) the generator loss is the RpGAN term only ----

def test_generator_loss_is_rpgan_only():
    g, d = tiny_nets()
    g0 = copy.deepcopy(g)
    x = tiny_batch()
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.0)  # D unchanged by its step: its G-step logits are known
    logs, fake = train_step(g, d, opt_g, opt_d, x, torch.Generator().manual_seed(5), gamma=1.0, noise_channels=1)
    with torch.no_grad():
        fake0 = fill_masked(g0, x["clean"], x["masks"], x["labels"], torch.Generator().manual_seed(5), 1)
        want = relativistic_g_loss(d(x["real"], x["masks"], x["labels"]), d(fake0, x["masks"], x["labels"]))
    assert torch.equal(fake.detach(), fake0)
    assert logs["loss_g"] == pytest.approx(float(want), rel=1e-6, abs=1e-7)
    assert {"loss_d", "loss_d_adv", "r1", "r2", "gamma"} <= set(logs)
    # outside the mask the fake is the clean crop exactly (composited before D sees it)
    assert torch.equal(fake0 * (1 - x["masks"]), x["clean"] * (1 - x["masks"]))
    # a D that answers 0 for everything: the loss is softplus(0) = log 2 and G gets no gradient at all
    with torch.no_grad():
        for p in d.parameters():
            p.zero_()
    g_before = copy.deepcopy(g.state_dict())
    logs, _ = train_step(g, d, torch.optim.SGD(g.parameters(), lr=1.0), opt_d, x, torch.Generator().manual_seed(6),
                         gamma=1.0, noise_channels=1)
    assert logs["loss_g"] == pytest.approx(math.log(2), abs=1e-7)
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in g.parameters())
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in g_before.items())


# ---- config / init_args ----

def test_config_rejects_other_losses_and_bad_widths():
    with pytest.raises(ConfigError, match="r3gan"):
        R3GANConfig(loss="bce").validate()
    with pytest.raises(ConfigError, match="group_size"):
        R3GANConfig(g_widths=[12, 24], group_size=16).validate()
    with pytest.raises(ConfigError, match="resolution"):
        R3GANConfig(resolution=40, g_widths=[16] * 5).validate()  # 40 is not a multiple of 16


def test_bad_init_args_key_is_named():
    with pytest.raises(ConfigError, match="g_widht"):
        R3GANGenerator.from_init_args({**SMALL, "g_widht": [8]})
    with pytest.raises(ConfigError, match="loss"):
        R3GANGenerator.from_init_args({"loss": "bce"})
    with pytest.raises(ConfigError, match=r"r3gan: init_args.config \(x.yaml\) is no longer read: write that file's "
                                          r"keys inline under init_args"):
        R3GANGenerator.from_init_args({"config": "x.yaml"})
    gen = R3GANGenerator.from_init_args({**SMALL, "max_steps": 3})
    assert gen.cfg.max_steps == 3 and gen.cfg.g_widths == [16, 32, 64, 64] and gen.g is None


# ---- (f) fit -> from_checkpoint -> synthesize ----

def test_tiny_fit_and_synthesize(tmp_path, woven_root):
    from defectfill.data.datasets import load_reference_dataset

    unfitted = R3GANGenerator.from_init_args({**SMALL, "max_steps": 2, "batch_size": 2,
                                              "checkpointing_steps": 100, "sample_every": 100, "log_every": 1,
                                              "dilation": 3, **TINY})
    dataset = load_reference_dataset(woven_root)
    final = unfitted.fit(dataset, tmp_path / "fit", seed=0)
    assert final == tmp_path / "fit" / "final"
    assert (final / "weights.safetensors").is_file() and (final / "config.yaml").is_file()

    gen = R3GANGenerator.from_checkpoint(final)
    assert gen.name == "r3gan" and gen.preserves_background and gen.dilation == 3
    assert gen.classes == dataset.defect_types and gen.channels == 1
    meta = gen.metadata()
    assert meta["generator"] == "r3gan" and meta["weights_hash"]

    clean = np.asarray(Image.open(dataset.good_paths[0]).convert("L"))
    mask = np.zeros(clean.shape, bool)
    mask[50:62, 100:130] = True
    cls = gen.classes[0]
    out, info = gen.synthesize(clean, mask, seed=7, defect_class=cls)
    assert out.shape == clean.shape and out.dtype == clean.dtype
    far = ndimage.distance_transform_edt(~mask) > gen.dilation
    assert np.array_equal(out[far], clean[far])
    assert info["defect_class_used"] == cls and len(info["window_yxhw"]) == 4
    again, _ = gen.synthesize(clean, mask, seed=7, defect_class=cls)
    other, _ = gen.synthesize(clean, mask, seed=8, defect_class=cls)
    assert np.array_equal(out, again)
    assert not np.array_equal(out, other)
    assert not np.array_equal(out[mask], clean[mask])
    rgb = np.stack([clean] * 3, axis=-1)
    out_rgb, _ = gen.synthesize(rgb, mask, seed=7, defect_class=cls)
    assert out_rgb.shape == rgb.shape and np.array_equal(out_rgb[far], rgb[far])
    with pytest.raises(ConfigError, match="generator_args"):
        R3GANGenerator.from_checkpoint(final, strength=1)
