"""R3GAN training (`train`) on the shared GAN harness (the `Generator` adapter: generator.py).

One generator, no fusion network, no reconstruction / perceptual / L1 term: the question this
baseline answers is whether a single R3GAN-style generator trained with the RpGAN + R1 + R2 loss
alone (Huang et al., "The GAN is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024,
§2) matches the Multistage GAN's explicit fusion stage.

Per step: real = real defect crops with their masks and classes; fake = clean crops from `good/`
(mostly-white crops skipped; without good/, other references' crops with their defect re-filled)
with the batch's real masks and classes, G's output composited inside the mask only,
clean·(1 − m) + G·m. D sees the mask as an input channel and the class by projection, so each
real/fake pair of the relativistic loss shares its conditioning.
D: relativistic_d_loss + γ/2·(R1 + R2) (γ cosine-scheduled); G: relativistic_g_loss only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from defectfill.data.datasets import CleanCropSampler, DefectCropSampler, load_reference_dataset
from defectfill.errors import ConfigError
from gan_baselines.dgt.model import defect_free_input
from gan_baselines.harness import GANHarness, GANTrainConfig, gray_rgb, pick_fabric_crops, to_channels
from gan_baselines.losses import discriminator_loss, relativistic_g_loss
from gan_baselines.r3gan.model import ProjectionDiscriminator, R3GANUNet


@dataclass
class R3GANConfig(GANTrainConfig):
    """GANTrainConfig plus the R3GAN networks' keys; the loss is always "r3gan"."""

    output_dir: str = "runs/gan/r3gan"
    loss: str = "r3gan"
    beta1: float = 0.0  # R3GAN's Adam betas (0, 0.99)
    beta2: float = 0.99
    g_widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # one encoder stage each
    g_blocks: int = 1  # residual blocks per stage
    d_widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    d_blocks: int = 1
    expansion: int = 2  # inverted bottleneck: hidden = width · expansion
    group_size: int = 16  # channels per group of the 3x3 convs (cardinality = hidden / group_size)
    noise_channels: int = 1  # N(0, 1) input channels drawn from the step / synthesis seed
    grid_samples: int = 4  # rows of the sample grids
    dilation: int = 4  # inference composite band (source pixels) outside the mask

    def validate(self) -> None:
        super().validate()
        if self.loss != "r3gan":
            raise ConfigError(f"the r3gan baseline trains with loss r3gan (RpGAN + R1 + R2) only, got {self.loss!r}")
        for name in ("g_blocks", "d_blocks", "expansion", "group_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("noise_channels", "grid_samples", "dilation", "gamma", "gamma_final"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("g_widths", "d_widths"):
            widths = getattr(self, name)
            if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
                raise ConfigError(f"{name} must be a non-empty list of positive integers, got {widths}")
            bad = [w for w in widths if (w * self.expansion) % self.group_size]
            if bad:
                raise ConfigError(f"{name}: width x expansion ({self.expansion}) must be a multiple of group_size "
                                  f"{self.group_size}; not so for {bad}")
            if self.resolution % 2 ** (len(widths) - 1):
                raise ConfigError(f"resolution {self.resolution} must be a multiple of 2**(len({name}) - 1) = "
                                  f"{2 ** (len(widths) - 1)}")


def build_networks(cfg: R3GANConfig, num_classes: int, channels: int) -> tuple[R3GANUNet, ProjectionDiscriminator]:
    g = R3GANUNet(channels, num_classes, cfg.g_widths, cfg.g_blocks, cfg.expansion, cfg.group_size,
                  cfg.noise_channels)
    d = ProjectionDiscriminator(channels, num_classes, cfg.resolution, cfg.d_widths, cfg.d_blocks, cfg.expansion,
                                cfg.group_size)
    return g, d


def fill_masked(g: torch.nn.Module, clean: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator, noise_channels: int) -> torch.Tensor:
    """clean·(1 − m) + G(clean, m, class, noise)·m, the noise drawn (on the CPU) from `generator`."""
    noise = torch.randn((clean.shape[0], noise_channels, *clean.shape[2:]), generator=generator).to(clean)
    out = g(clean, masks, labels, noise)
    return clean * (1 - masks) + out * masks


class _Batches:
    """Per-step batches: real defect crops + masks + classes, and clean crops; depend only on
    (seed, step, process) like the samplers."""

    def __init__(self, cfg: R3GANConfig, dataset, classes: list[str], channels: int):
        self.cfg, self.channels = cfg, channels
        self.defects = DefectCropSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed)
        self.cleans = (CleanCropSampler(dataset.good_paths, cfg.crop_size, cfg.resolution, cfg.seed)
                       if dataset.good_paths else None)
        index = {c: i for i, c in enumerate(classes)}
        self.label_of = {s.id: index[s.defect_type] for s in dataset.samples}

    def __call__(self, step: int, process: int, device: torch.device) -> dict[str, torch.Tensor]:
        n = self.cfg.batch_size
        b = self.defects.batch(step, process, n)
        real, masks = to_channels(b["pixel_values"], self.channels), b["masks"]
        labels = torch.tensor([self.label_of[i] for i in b["ids"]])
        if self.cleans is not None:  # twice the crops, so blank ones can be skipped
            clean = pick_fabric_crops(to_channels(self.cleans.batch(step, process, 2 * n), self.channels), n)
        else:  # no good/ folder: other references' crops, their defect re-filled, stand in for clean ones
            clean = defect_free_input(real, masks, "telea").roll(1, 0)
        out = {"real": real, "masks": masks, "labels": labels, "clean": clean}
        return {k: v.to(device) for k, v in out.items()}


def train_step(g: torch.nn.Module, d: torch.nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               x: dict[str, torch.Tensor], generator: torch.Generator, gamma: float, noise_channels: int,
               accelerator=None) -> tuple[dict[str, float], torch.Tensor]:
    """One D step (RpGAN + γ/2·(R1 + R2)) then one G step (RpGAN only); returns (logs, fake)."""
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    with autocast():
        fake = fill_masked(g, x["clean"], x["masks"], x["labels"], generator, noise_channels)

    def critic(img: torch.Tensor) -> torch.Tensor:
        with autocast():
            return d(img, x["masks"], x["labels"]).float()

    opt_d.zero_grad(set_to_none=True)
    loss_d, logs = discriminator_loss("r3gan", critic, x["real"], fake, gamma)
    backward(loss_d)
    opt_d.step()

    # G: the relativistic pairing loss and nothing else (D's gradients from it are cleared before D's next step)
    opt_g.zero_grad(set_to_none=True)
    loss_g = relativistic_g_loss(critic(x["real"]), critic(fake))
    backward(loss_g)
    opt_g.step()
    return {"loss_g": float(loss_g.detach()), **logs}, fake


def sample_rows(x: dict[str, torch.Tensor], fake: torch.Tensor, n: int) -> list[list]:
    """Grid rows clean | mask | generated | the real crop the mask came from."""
    return [[gray_rgb(x["clean"][i]), x["masks"][i], gray_rgb(fake[i]), gray_rgb(x["real"][i])]
            for i in range(min(n, fake.shape[0]))]


def train(cfg: R3GANConfig, resume_from_checkpoint: str | None = None, dataset=None) -> Path:
    """Train on `dataset` (default: loaded from `cfg.data_dir`); returns `<output_dir>/final`."""
    cfg.validate()
    if dataset is None:
        dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold,
                                         defect_types=cfg.defect_types, max_samples=cfg.max_samples)
    classes, channels = dataset.defect_types, 1 if dataset.grayscale else 3
    torch.manual_seed(cfg.seed)
    g, d = build_networks(cfg, len(classes), channels)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    h = GANHarness(cfg, {"G": g, "D": d}, {"G": opt_g, "D": opt_d}, name="r3gan")
    h.resume(resume_from_checkpoint)
    g, d, opt_g, opt_d = h.modules["G"], h.modules["D"], h.optimizers["G"], h.optimizers["D"]
    batches = _Batches(cfg, dataset, classes, channels)
    acc = h.accelerator

    for step in h.steps():
        _, gen = h.rng()
        x = batches(step, acc.process_index, acc.device)
        logs, fake = train_step(g, d, opt_g, opt_d, x, gen, h.gamma(), cfg.noise_channels, acc)
        h.log(logs)
        if h.due(cfg.sample_every):
            h.save_grid(sample_rows(x, fake, cfg.grid_samples), "samples")
    return h.finish({"defect_classes": classes, "channels": channels})
