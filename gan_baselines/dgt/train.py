"""DGT training (`train`) and inference (`DGTGenerator`) on the shared GAN harness.

Self-supervised pairing (AITEX has no clean twin of a defective image): the generator's
"defect-free" input is the real defect crop with its mask region re-filled from the surroundings
(`input_fill`: cv2.inpaint Telea, or the mean outside the mask), and the target is the real crop
(reconstruction branch: foreground / background / blended L1 + adversarial). The transfer branch
puts the masks and classes of the batch's other references (the batch rolled by one) onto
defect-free crops from `good/` (mostly-white off-fabric crops skipped; filled the same way, so
the input distribution matches), and is trained by the adversarial loss only. Inference fills the window the same way before G runs.
The discriminator (PatchGAN, optionally mask-conditioned) compares each fake with the real crop
its mask came from, so real and fake share the conditioning mask.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from defectfill.errors import ConfigError
from defectfill.generators import Generator
from gan_baselines.dgt.model import (
    FILLS,
    PatchDiscriminator,
    UNetGenerator,
    background_l1,
    blend_l1,
    boundary_band,
    defect_free_input,
    foreground_l1,
    generator_input,
    smoothed_codes,
)
from gan_baselines.harness import GANHarness, GANTrainConfig, load_module_state, read_final

AuxLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DGTConfig(GANTrainConfig):
    """GANTrainConfig plus DGT's keys (codes smoothing, networks, loss weights, inference)."""

    output_dir: str = "runs/gan/dgt"
    sigma_min: float = 0.5  # stochastic Gaussian smoothing: sigma range (pixels at `resolution`)
    sigma_max: float = 3.0
    n_kernels: int = 3  # blurred copies mixed with random convex weights
    input_fill: str = "telea"  # telea | mean: how the defect region of the input is re-filled
    noise: bool = True  # extra N(0, 1) input channel drawn from the step / synthesis seed
    residual: bool = True  # G predicts a residual on the defect-free input (tanh pre-activation)
    g_channels: int = 32
    g_depth: int = 3
    d_channels: int = 32
    d_layers: int = 3
    d_mask: bool = True  # condition D on the mask
    lambda_fg: float = 10.0
    lambda_bg: float = 10.0
    lambda_blend: float = 5.0
    band_width: int = 2  # blended region: ±band_width pixels around the mask boundary
    lambda_adv: float = 1.0
    lambda_aux: float = 1.0  # weight of aux_loss_fn(output, mask, labels) when one is given
    grid_samples: int = 4  # rows per branch in the sample grids
    dilation: int = 4  # inference composite band (source pixels) outside the mask

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.sigma_min <= self.sigma_max:
            raise ConfigError(f"need 0 <= sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.input_fill not in FILLS:
            raise ConfigError(f"input_fill must be one of {', '.join(FILLS)}, got {self.input_fill!r}")
        for name in ("n_kernels", "g_channels", "g_depth", "d_channels", "d_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lambda_fg", "lambda_bg", "lambda_blend", "lambda_adv", "lambda_aux", "band_width",
                     "grid_samples", "dilation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.resolution % 2**self.g_depth:
            raise ConfigError(f"resolution {self.resolution} must be a multiple of 2**g_depth = {2**self.g_depth}")


def build_networks(cfg: DGTConfig, num_classes: int, channels: int) -> tuple[UNetGenerator, PatchDiscriminator]:
    """G: (K + 1 code channels + image channels [+ noise]) → image; D: image [+ mask] → patch logits."""
    g = UNetGenerator(num_classes + 1 + channels + int(cfg.noise), channels, cfg.g_channels, cfg.g_depth,
                      residual=cfg.residual)
    d = PatchDiscriminator(channels + int(cfg.d_mask), cfg.d_channels, cfg.d_layers)
    return g, d


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, channels, H, W): the grey mean for 1-channel models."""
    return images.mean(dim=1, keepdim=True) if channels == 1 else images


def run_generator(g: torch.nn.Module, background: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                  num_classes: int, cfg: DGTConfig, generator: torch.Generator) -> torch.Tensor:
    """G(concat(smoothed F, smoothed B, defect-free image[, noise])); draws come from `generator`."""
    codes = smoothed_codes(masks.cpu(), labels.cpu(), num_classes, generator, (cfg.sigma_min, cfg.sigma_max),
                           cfg.n_kernels).to(background)
    noise = None
    if cfg.noise:
        noise = torch.randn(masks.shape, generator=generator).to(background)
    return g(generator_input(codes, background, noise), background if cfg.residual else None)


def reconstruction_losses(output: torch.Tensor, target: torch.Tensor, background: torch.Tensor,
                          masks: torch.Tensor, band_width: int) -> dict[str, torch.Tensor]:
    """The three region L1 terms of the reconstruction branch."""
    return {"loss_fg": foreground_l1(output, target, masks),
            "loss_bg": background_l1(output, background, masks),
            "loss_blend": blend_l1(output, target, boundary_band(masks, band_width))}


def pick_fabric_crops(crops: torch.Tensor, n: int, white: float = 0.96, max_white: float = 0.5) -> torch.Tensor:
    """The first `n` crops (in order) that are mostly fabric: fewer than `max_white` of their
    pixels at or above `white` ([-1, 1] scale; AITEX images have blank off-fabric columns);
    mostly-white crops only fill up the rest when too few remain."""
    blank = (crops >= white).float().flatten(1).mean(1) >= max_white
    order = sorted(range(len(crops)), key=lambda i: bool(blank[i]))  # stable: fabric first, in order
    return crops[order[:n]]


def gray_rgb(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) image → 3 channels for `image_grid` (1-channel tensors there mean masks)."""
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


class _Batches:
    """Per-step training batches: defect crops (+ labels), their filled inputs, clean crops and
    the transfer masks; depends only on (seed, step, process) like the samplers."""

    def __init__(self, cfg: DGTConfig, dataset, classes: list[str], channels: int):
        from defectfill.data.datasets import CleanCropSampler, DefectCropSampler

        self.cfg, self.channels = cfg, channels
        self.defects = DefectCropSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed)
        self.cleans = (CleanCropSampler(dataset.good_paths, cfg.crop_size, cfg.resolution, cfg.seed)
                       if dataset.good_paths else None)
        index = {c: i for i, c in enumerate(classes)}
        self.label_of = {s.id: index[s.defect_type] for s in dataset.samples}

    def __call__(self, step: int, process: int, device: torch.device) -> dict[str, torch.Tensor]:
        b = self.defects.batch(step, process, self.cfg.batch_size)
        target = to_channels(b["pixel_values"], self.channels)
        masks = b["masks"]
        labels = torch.tensor([self.label_of[i] for i in b["ids"]])
        background = defect_free_input(target, masks, self.cfg.input_fill)
        t_masks, t_labels = masks.roll(1, 0), labels.roll(1, 0)
        if self.cleans is not None:  # twice the crops, so blank ones can be skipped
            clean = pick_fabric_crops(to_channels(self.cleans.batch(step, process, 2 * self.cfg.batch_size),
                                                  self.channels), self.cfg.batch_size)
        else:  # no good/ folder: other references' filled crops stand in for clean images
            clean = background.roll(2, 0)
        t_background = defect_free_input(clean, t_masks, self.cfg.input_fill)
        out = {"target": target, "masks": masks, "labels": labels, "background": background,
               "t_masks": t_masks, "t_labels": t_labels, "t_background": t_background, "t_target": target.roll(1, 0)}
        return {k: v.to(device) for k, v in out.items()}


def train(cfg: DGTConfig, resume_from_checkpoint: str | None = None,
          aux_loss_fn: AuxLossFn | None = None) -> Path:
    """Train DGT on `cfg.data_dir` with the shared harness; returns `<output_dir>/final`.

    `aux_loss_fn(output, mask, labels) -> scalar` is an optional downstream (segmentation /
    classification) loss on all generated images, added to G's loss with weight `lambda_aux`.
    """
    from defectfill.data.datasets import load_reference_dataset
    from gan_baselines.losses import discriminator_loss, generator_loss

    cfg.validate()
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold,
                                     defect_types=cfg.defect_types, max_samples=cfg.max_samples)
    classes, channels = dataset.defect_types, 1 if dataset.grayscale else 3
    torch.manual_seed(cfg.seed)
    g, d = build_networks(cfg, len(classes), channels)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    h = GANHarness(cfg, {"G": g, "D": d}, {"G": opt_g, "D": opt_d}, name="dgt")
    h.resume(resume_from_checkpoint)
    g, d, opt_g, opt_d = h.modules["G"], h.modules["D"], h.optimizers["G"], h.optimizers["D"]
    batches = _Batches(cfg, dataset, classes, channels)
    device, acc = h.accelerator.device, h.accelerator

    for step in h.steps():
        _, gen = h.rng()
        x = batches(step, acc.process_index, device)
        with acc.autocast():
            recon = run_generator(g, x["background"], x["masks"], x["labels"], len(classes), cfg, gen)
            moved = run_generator(g, x["t_background"], x["t_masks"], x["t_labels"], len(classes), cfg, gen)
        fake, real = torch.cat([recon, moved]), torch.cat([x["target"], x["t_target"]])
        cond = torch.cat([x["masks"], x["t_masks"]])

        def critic(img: torch.Tensor) -> torch.Tensor:
            with acc.autocast():
                return d(torch.cat([img, cond], dim=1) if cfg.d_mask else img)

        # discriminator step
        opt_d.zero_grad(set_to_none=True)
        loss_d, logs = discriminator_loss(cfg.loss, critic, real, fake, h.gamma())
        h.backward(loss_d)
        opt_d.step()

        # generator step (D's gradients from it are cleared before D's next step)
        opt_g.zero_grad(set_to_none=True)
        rec = reconstruction_losses(recon.float(), x["target"], x["background"], x["masks"], cfg.band_width)
        adv = generator_loss(cfg.loss, critic, real, fake)
        loss_g = (cfg.lambda_fg * rec["loss_fg"] + cfg.lambda_bg * rec["loss_bg"]
                  + cfg.lambda_blend * rec["loss_blend"] + cfg.lambda_adv * adv)
        if aux_loss_fn is not None:
            aux = aux_loss_fn(fake, cond, torch.cat([x["labels"], x["t_labels"]]))
            loss_g = loss_g + cfg.lambda_aux * aux
            logs["loss_aux"] = float(aux.detach())
        h.backward(loss_g)
        opt_g.step()

        values = {"loss_g": loss_g, "loss_g_adv": adv, **rec}
        h.log({**{k: float(v.detach()) for k, v in values.items()}, **logs})
        if h.due(cfg.sample_every):
            h.save_grid(sample_rows(x, recon, moved, cfg.grid_samples), "samples")
    return h.finish({"defect_classes": classes, "channels": channels})


def sample_rows(x: dict[str, torch.Tensor], recon: torch.Tensor, moved: torch.Tensor, n: int) -> list[list]:
    """Grid rows input | mask | output | target: first reconstruction rows, then transfer rows
    (clean input, a borrowed mask, the transferred defect, the real crop that mask came from)."""
    n = min(n, recon.shape[0])
    rows = [[gray_rgb(x["background"][i]), x["masks"][i], gray_rgb(recon[i]), gray_rgb(x["target"][i])]
            for i in range(n)]
    rows += [[gray_rgb(x["t_background"][i]), x["t_masks"][i], gray_rgb(moved[i]), gray_rgb(x["t_target"][i])]
             for i in range(n)]
    return rows


class DGTGenerator(Generator):
    """A trained DGT generator behind the shared `Generator` interface.

    `synthesize(clean, mask, seed, defect_class)` cuts a window around the mask (`windowed`),
    re-fills the mask region like in training, builds the class's codes, smooths them with draws
    from `seed`, runs G and composites the result, so pixels farther than `dilation` from the
    mask stay bit-identical to `clean`.
    """

    name = "dgt"
    preserves_background = True

    def __init__(self, cfg: DGTConfig, classes: list[str], channels: int, g: UNetGenerator,
                 device: torch.device | str = "cpu", source: str | None = None, dilation: int | None = None):
        self.cfg, self.classes, self.channels = cfg, list(classes), channels
        self.g = g.to(device).eval()
        self.device = torch.device(device)
        self.source = source
        self.dilation = cfg.dilation if dilation is None else int(dilation)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", dilation: int | None = None,
                        **kwargs) -> "DGTGenerator":
        """Load `<run>/final` (config.yaml + weights.safetensors written by `train`)."""
        if checkpoint is None:
            raise ConfigError("the dgt generator needs checkpoint: a DGT training run's final folder")
        if kwargs:
            raise ConfigError(f"dgt: unknown generator_args {', '.join(sorted(kwargs))} (known: dilation)")
        config, weights = read_final(checkpoint)
        where = Path(checkpoint) / "config.yaml"
        if config.get("baseline") != "dgt" or "defect_classes" not in config:
            raise ConfigError(f"{where}: not a DGT run (baseline {config.get('baseline')!r})")
        fields = set(DGTConfig.__dataclass_fields__)
        cfg = DGTConfig(**{k: v for k, v in config.items() if k in fields})
        classes, channels = config["defect_classes"], int(config["channels"])
        g, _ = build_networks(cfg, len(classes), channels)
        load_module_state({"G": g}, {k: v for k, v in weights.items() if k.startswith("G.")}, Path(checkpoint))
        return cls(cfg, classes, channels, g, device=device, source=str(checkpoint), dilation=dilation)

    def metadata(self) -> dict:
        from defectfill.generate import file_sha256

        about = {"generator": self.name, "defect_classes": self.classes, "dilation": self.dilation}
        if self.source:
            weights = Path(self.source) / "weights.safetensors"
            about.update(checkpoint=self.source, weights_hash=file_sha256(weights))
        return about

    def class_index(self, defect_class: str | None, rng: np.random.Generator) -> int:
        """The class channel of `defect_class` (None: one drawn from the seed)."""
        if defect_class is None:
            return int(rng.integers(len(self.classes)))
        if defect_class not in self.classes:
            raise ValueError(f"dgt: unknown defect class {defect_class!r}; available: {', '.join(self.classes)}")
        return self.classes.index(defect_class)

    @torch.no_grad()
    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int,
                   defect_class: str | None = None, placement=None) -> tuple[np.ndarray, dict]:
        from defectfill.compositing import windowed

        label = self.class_index(defect_class, np.random.default_rng([seed, 0]))
        gen = torch.Generator().manual_seed(int(seed) % 2**63)

        def make(window_r: np.ndarray, mask_r: np.ndarray) -> np.ndarray:
            img = torch.from_numpy(np.array(window_r)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            m = torch.from_numpy(mask_r.astype(np.float32))[None, None]
            background = defect_free_input(to_channels(img, self.channels), m, self.cfg.input_fill)
            out = run_generator(self.g, background.to(self.device), m.to(self.device), torch.tensor([label]),
                                len(self.classes), self.cfg, gen)[0].float().cpu()
            rgb = ((out.clamp(-1, 1) + 1) * 127.5).round().byte().expand(3, -1, -1)
            return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())

        result, window = windowed(clean, mask, self.cfg.crop_size, self.cfg.resolution, self.dilation, make)
        return result, {"window_yxhw": list(window), "defect_class_index": label,
                        "defect_class_used": self.classes[label]}
