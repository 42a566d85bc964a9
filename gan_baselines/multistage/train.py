"""Multistage GAN training (`train`) on the shared GAN harness (the `Generator` adapter: generator.py).

Data per step (all stateless by step, like the samplers): B real defect crops and masks
(`DefectCropSampler`) and B defect-free crops (`CleanCropSampler` over `good/`), each paired
with a defect crop of the same fabric when the manifest has a `fabric_type` column.

- Stage 1 (texture-conditioned defect GAN): the style s = Gram vector of the clean crop (Gram
  matrices of `style_backbone` features at `style_layers`: by default the pretrained
  EfficientNet-Lite0 at strides 4, 8 and 16; VGG19 as in the paper from a local weights file,
  or a RANDOM VGG19 only when asked for); real
  pairs (the defect crop's mask bounding box resized to P×P, s), fake pairs (G1(z, s), s).
- Stage 2 (defect fusion): the G1 patch (detached) is pasted into the defect mask of the clean
  crop; T fuses it; D2 judges fused windows against the real defect crops (same masks).
  T's loss = adversarial + lambda_rec · L1(T(real crop, mask), real crop) (identity input: the
  crop's own defect re-pasted) + lambda_bg · L1 outside the mask between T's output and its input.

Schedule: the paper trains stage 1, then stage 2. Here every step updates D1, G1 and, from step
`stage1_steps` on, D2 and T too (alternating within the step); `stage1_steps: 0` (default)
trains both stages jointly from the start, `stage1_steps: N` gives N stage-1-only steps first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from defectfill.data.datasets import CleanCropSampler, DefectCropSampler, load_reference_dataset
from defectfill.errors import ConfigError, DataError
from gan_baselines.harness import GANHarness, GANTrainConfig, gray_rgb, to_channels
from gan_baselines.losses import discriminator_loss, generator_loss
from gan_baselines.multistage.model import (
    STYLE_BACKBONES,
    STYLE_ENCODER_NAME,
    StyleEncoder,
    build_discriminators,
    build_generators,
    check_style_layers,
    crop_patches,
    paste_patches,
)

NAME = "multistage_gan"  # the `baseline` a run's final/config.yaml records (MultistageGANGenerator.name)


@dataclass
class MultistageConfig(GANTrainConfig):
    """GANTrainConfig plus the Multistage GAN's keys (texture condition, networks, losses, schedule)."""

    output_dir: str = "runs/gan/multistage"
    patch_size: int = 32  # P: stage-1 defect patches are P×P
    z_dim: int = 64
    style_dim: int = 64  # the learned projection of the Gram entries
    # texture features: efficientnet-lite0 (pretrained, default) | vgg19 (needs vgg_weights) | vgg19-random
    style_backbone: str = "efficientnet-lite0"
    style_layers: list[str] | None = None  # None: the backbone's default (stride4/8/16; vgg19: relu1_1, relu2_1)
    vgg_weights: str | None = None  # style_backbone vgg19: local torchvision vgg19 ImageNet weights (required)
    width_g: int = 32  # base channels of G1 and T
    width_d: int = 32  # base channels of D1 and D2
    lambda_rec: float = 10.0  # T: L1 on identity inputs (real crop → itself)
    lambda_bg: float = 10.0  # T: L1 outside the mask (output vs its pasted input)
    stage1_steps: int = 0  # stage-1-only steps before both stages alternate (0: joint from the start)
    fabric_pairing: bool = True  # clean crop of the defect's fabric (manifest fabric_type) when known
    grid_samples: int = 4  # rows in the sample grids
    dilation: int = 8  # inference composite band (source pixels) outside the mask

    def validate(self) -> None:
        super().validate()
        p = self.patch_size
        if p < 8 or p & (p - 1):
            raise ConfigError(f"patch_size must be a power of two >= 8, got {p}")
        for name in ("z_dim", "style_dim", "width_g", "width_d", "grid_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lambda_rec", "lambda_bg", "stage1_steps", "dilation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.style_backbone not in STYLE_BACKBONES:
            raise ConfigError(f"style_backbone must be one of {', '.join(STYLE_BACKBONES)}, got "
                              f"{self.style_backbone!r}")
        check_style_layers(self.style_backbone, self.style_layers)
        if self.style_backbone == "vgg19" and not self.vgg_weights:
            raise ConfigError("style_backbone vgg19 needs vgg_weights (a local torchvision vgg19 ImageNet state dict); "
                              "for torchvision's random init say style_backbone: vgg19-random")
        if self.vgg_weights and self.style_backbone != "vgg19":
            raise ConfigError(f"vgg_weights is for style_backbone vgg19; style_backbone is {self.style_backbone!r}")


class StylePatchSampler:
    """Defect-free crops for the texture condition, one per defect crop of a batch, drawn from
    the defect's fabric when known (else from all of `good/`); stateless by step."""

    def __init__(self, dataset, crop_size: int, resolution: int, seed: int, pair_by_fabric: bool = True):
        if not dataset.good_paths:
            raise DataError(f"{dataset.root / 'good'}: no defect-free images; the Multistage GAN takes its "
                            "texture condition from them")
        fabric = dataset.fabric_types if pair_by_fabric else {}  # the manifest's fabric_type column
        groups: dict[str, list[Path]] = {}
        for path in dataset.good_paths:
            if path.stem in fabric:
                groups.setdefault(fabric[path.stem], []).append(path)
        self.by_fabric = {f: CleanCropSampler(paths, crop_size, resolution, seed + 1 + i)
                          for i, (f, paths) in enumerate(sorted(groups.items()))}
        self.any = CleanCropSampler(dataset.good_paths, crop_size, resolution, seed)
        self.fabric_of = {s.id: fabric.get(s.id) for s in dataset.samples}

    def batch(self, step: int, process_index: int, ids: list[str]) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1]: a clean crop for each defect id."""
        keys = [self.fabric_of.get(i) if self.fabric_of.get(i) in self.by_fabric else None for i in ids]
        out: list[torch.Tensor | None] = [None] * len(ids)
        for key in sorted(set(keys), key=lambda k: (k is None, k or "")):
            where = [j for j, k in enumerate(keys) if k == key]
            crops = self.by_fabric.get(key, self.any).batch(step, process_index, len(where))
            for j, crop in zip(where, crops):
                out[j] = crop
        return torch.stack(out)


def background_l1(output: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |output − target| over the pixels outside the mask (and channels)."""
    outside = (1 - masks).expand_as(output)
    return ((output - target).abs() * outside).sum() / outside.sum().clamp_min(1)


def sample_rows(x: dict[str, torch.Tensor], patches: torch.Tensor, fused: torch.Tensor, n: int) -> list[list]:
    """Grid rows clean | generated patch | fused | mask | real defect crop (for comparison)."""
    n = min(n, fused.shape[0])
    return [[gray_rgb(x["clean"][i]), gray_rgb(patches[i]), gray_rgb(fused[i]), x["masks"][i],
             gray_rgb(x["real"][i])] for i in range(n)]


def build_optimizers(cfg: MultistageConfig, modules: dict[str, torch.nn.Module]) -> dict[str, torch.optim.Optimizer]:
    """Adam per network: lr_g for G1 and T, lr_d for D1 and D2."""
    return {k: torch.optim.Adam(m.parameters(), lr=cfg.lr_d if k.startswith("D") else cfg.lr_g,
                                betas=(cfg.beta1, cfg.beta2)) for k, m in modules.items()}


class _Batches:
    """Per-step inputs: real defect crops, masks, their real P×P patches, paired clean crops and
    the clean crops' Gram vectors (the style condition)."""

    def __init__(self, cfg: MultistageConfig, dataset, channels: int, encoder: StyleEncoder):
        self.cfg, self.channels, self.encoder = cfg, channels, encoder
        self.defects = DefectCropSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed)
        self.cleans = StylePatchSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed, cfg.fabric_pairing)

    @torch.no_grad()
    def __call__(self, step: int, process: int, device: torch.device) -> dict[str, torch.Tensor]:
        b = self.defects.batch(step, process, self.cfg.batch_size)
        real = to_channels(b["pixel_values"], self.channels).to(device)
        masks = b["masks"].to(device)
        clean = to_channels(self.cleans.batch(step, process, b["ids"]), self.channels).to(device)
        return {"real": real, "masks": masks, "clean": clean,
                "real_patches": crop_patches(real, masks, self.cfg.patch_size),
                "gram": self.encoder.gram_vector(clean)}


def adversarial_step(h: GANHarness, cfg: MultistageConfig, d_key: str, g_key: str, critic, real: torch.Tensor,
                     fake: torch.Tensor, extra: torch.Tensor | None = None) -> dict[str, float]:
    """One D update, then one G update with the adversarial loss (+ `extra`, already weighted)."""
    d, opt_d, opt_g = h.modules[d_key], h.optimizers[d_key], h.optimizers[g_key]
    d.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    loss_d, info = discriminator_loss(cfg.loss, critic, real, fake, h.gamma())
    h.backward(loss_d)
    opt_d.step()
    d.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    adv = generator_loss(cfg.loss, critic, real, fake)
    h.backward(adv if extra is None else adv + extra)
    opt_g.step()
    return {**info, "loss_adv": float(adv.detach())}


def stage1_step(h: GANHarness, cfg: MultistageConfig, x: dict, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Texture-conditioned defect GAN: D1 on (patch, style) pairs, then G1. Returns G1's patches."""
    g1, d1, acc = h.modules["G1"], h.modules["D1"], h.accelerator
    with acc.autocast():
        patches = g1(z, x["gram"])

    def critic(p: torch.Tensor) -> torch.Tensor:
        with acc.autocast():
            return d1(p, x["gram"]).float()

    logs = adversarial_step(h, cfg, "D1", "G1", critic, x["real_patches"], patches)
    return patches.detach(), {f"stage1/{k}": v for k, v in logs.items()}


def stage2_step(h: GANHarness, cfg: MultistageConfig, x: dict, patches: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Defect fusion: T on (clean + pasted patch) and on identity inputs (real crops), D2, then T."""
    t, d2, acc = h.modules["T"], h.modules["D2"], h.accelerator
    pasted = paste_patches(x["clean"], patches, x["masks"])
    n = pasted.shape[0]
    with acc.autocast():
        out = t(torch.cat([pasted, x["real"]]), torch.cat([x["masks"], x["masks"]])).float()
    fused, rebuilt = out[:n], out[n:]
    rec = F.l1_loss(rebuilt, x["real"])
    bg = background_l1(fused, pasted, x["masks"])

    def critic(img: torch.Tensor) -> torch.Tensor:
        with acc.autocast():
            return d2(img, x["masks"]).float()

    logs = adversarial_step(h, cfg, "D2", "T", critic, x["real"], fused, cfg.lambda_rec * rec + cfg.lambda_bg * bg)
    logs.update(loss_rec=float(rec.detach()), loss_bg=float(bg.detach()))
    return fused.detach(), {f"stage2/{k}": v for k, v in logs.items()}


@torch.no_grad()
def fuse_only(h: GANHarness, x: dict, patches: torch.Tensor) -> torch.Tensor:
    """T's output without training it (for sample grids during the stage-1-only steps)."""
    return h.modules["T"](paste_patches(x["clean"], patches, x["masks"]), x["masks"]).float()


def train(cfg: MultistageConfig, resume_from_checkpoint: str | None = None) -> Path:
    """Train the Multistage GAN on `cfg.data_dir` with the shared harness; returns `<output_dir>/final`
    (weights.safetensors with G1, T, D1, D2; config.yaml; style_encoder.safetensors)."""
    cfg.validate()
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold,  # before any weights load
                                     defect_types=cfg.defect_types, max_samples=cfg.max_samples)
    encoder = StyleEncoder(cfg.style_layers, cfg.vgg_weights, backbone=cfg.style_backbone)
    channels = 1 if dataset.grayscale else 3
    torch.manual_seed(cfg.seed)
    modules = {**build_generators(cfg, encoder.layer_channels, channels),
               **build_discriminators(cfg, encoder.layer_channels, channels)}
    h = GANHarness(cfg, modules, build_optimizers(cfg, modules), name=NAME)
    h.resume(resume_from_checkpoint)
    device, acc = h.accelerator.device, h.accelerator
    batches = _Batches(cfg, dataset, channels, encoder.to(device))

    for step in h.steps():
        _, gen = h.rng()
        x = batches(step, acc.process_index, device)
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)
        patches, logs = stage1_step(h, cfg, x, z)
        fused = None
        if step >= cfg.stage1_steps:
            fused, more = stage2_step(h, cfg, x, patches)
            logs.update(more)
        h.log(logs)
        if h.due(cfg.sample_every):
            fused = fuse_only(h, x, patches) if fused is None else fused
            h.save_grid(sample_rows(x, patches, fused, cfg.grid_samples), "samples")
    is_main = acc.is_main_process
    final = h.finish({"channels": channels, "style_encoder": encoder.description})
    if is_main:
        encoder.save(final / STYLE_ENCODER_NAME)
    return final
