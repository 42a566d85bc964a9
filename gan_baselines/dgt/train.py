"""DGT training (`train`) on the shared GAN harness (the `Generator` adapter: generator.py).

Self-supervised pairing (AITEX has no clean twin of a defective image): the generator's
"defect-free" input is the real defect crop with its mask region re-filled from the surroundings
(`input_fill`: cv2.inpaint Telea, or the mean outside the mask), and the target is the real crop
(reconstruction branch: foreground / background / blended L1 + adversarial). The transfer branch
puts the masks and classes of the batch's other references (the batch rolled by one) onto
defect-free crops from `good/` (mostly-white off-fabric crops skipped; filled the same way, so
the input distribution matches), and is trained by the adversarial loss only. Inference (generator.py) fills
the window the same way before G runs.
The discriminator (PatchGAN, optionally mask-conditioned) compares each fake with the real crop
its mask came from, so real and fake share the conditioning mask.

DGT's two downstream modules train jointly with G, each with its own Adam: DIS (defect image
segmentation, `defectfill.downstream.dis.DISUNet`, loss `dis_loss` = BCE + soft Dice) on the real
crops and the (detached) generated crops with their true masks, and DFC (defect feature
classification, `defectfill.downstream.openset.DFCNet`, cross-entropy) on the real and generated
crops' classes. G's loss then gets `lambda_dis * dis_loss(DIS(fake), masks) + lambda_dfc *
CE(DFC(fake), labels)`, back-propagated through the two modules into G, so G learns defects that
a segmenter can find and a classifier can tell apart. `lambda_dis = 0` / `lambda_dfc = 0` leaves
the module out entirely. The final folder holds G, D, DIS and DFC weights (`from_checkpoint`
loads only G). DIS and DFC see images in [0, 1] (the benchmark's segmenter convention).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from defectfill.data.datasets import CleanCropSampler, DefectCropSampler, load_reference_dataset
from defectfill.downstream.dis import DISUNet, dis_loss
from defectfill.downstream.openset import DFCNet
from defectfill.errors import ConfigError
from defectfill.training_utils import load_module_state
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
from gan_baselines.harness import GANHarness, GANTrainConfig, gray_rgb, pick_fabric_crops, read_final, to_channels
from gan_baselines.losses import discriminator_loss, generator_loss

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
    # DGT's downstream modules (trained jointly; their losses on G's output are added to G's loss)
    lambda_dis: float = 1.0  # weight of dis_loss(DIS(fake), mask) in G's loss; 0: no DIS module
    lambda_dfc: float = 1.0  # weight of CE(DFC(fake), class) in G's loss; 0: no DFC module
    lr_dis: float = 1e-3
    lr_dfc: float = 1e-3
    dis_width: int = 16  # DIS U-Net: first-level channels
    dis_depth: int = 3  # DIS U-Net: 2x downsamplings
    dfc_pretrained: bool = True  # DFC encoder: frozen ImageNet EfficientNet-Lite0; False: small CNN from scratch
    dfc_hidden: int = 64  # DFC embedding size
    grid_samples: int = 4  # rows per branch in the sample grids
    dilation: int = 4  # inference composite band (source pixels) outside the mask

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.sigma_min <= self.sigma_max:
            raise ConfigError(f"need 0 <= sigma_min <= sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.input_fill not in FILLS:
            raise ConfigError(f"input_fill must be one of {', '.join(FILLS)}, got {self.input_fill!r}")
        for name in ("n_kernels", "g_channels", "g_depth", "d_channels", "d_layers", "dis_width", "dis_depth",
                     "dfc_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lambda_fg", "lambda_bg", "lambda_blend", "lambda_adv", "lambda_aux", "lambda_dis",
                     "lambda_dfc", "band_width", "grid_samples", "dilation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_dis", "lr_dfc"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.resolution % 2**self.g_depth:
            raise ConfigError(f"resolution {self.resolution} must be a multiple of 2**g_depth = {2**self.g_depth}")


def build_networks(cfg: DGTConfig, num_classes: int, channels: int) -> tuple[UNetGenerator, PatchDiscriminator]:
    """G: (K + 1 code channels + image channels [+ noise]) → image; D: image [+ mask] → patch logits."""
    g = UNetGenerator(num_classes + 1 + channels + int(cfg.noise), channels, cfg.g_channels, cfg.g_depth,
                      residual=cfg.residual)
    d = PatchDiscriminator(channels + int(cfg.d_mask), cfg.d_channels, cfg.d_layers)
    return g, d


def build_downstream(cfg: DGTConfig, num_classes: int, channels: int) -> dict[str, torch.nn.Module]:
    """DGT's DIS (U-Net heat map) and DFC (crop classifier) for the enabled terms (lambda > 0);
    random layers come from the global RNG (seeded by `train`)."""
    out: dict[str, torch.nn.Module] = {}
    if cfg.lambda_dis > 0:
        out["DIS"] = DISUNet(channels, cfg.dis_width, cfg.dis_depth)
    if cfg.lambda_dfc > 0:
        out["DFC"] = DFCNet(num_classes, cfg.dfc_pretrained, cfg.dfc_hidden, channels)
    return out


def load_downstream(checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """The trained DIS and DFC (those the run had) from a DGT run's final folder, in eval mode.
    DIS: [0, 1] images -> defect logits (`defectfill.downstream.dis.heat_map`); DFC: [0, 1] crops ->
    class logits over the config's `defect_classes` (no OpenMax model: fit one with
    `defectfill.downstream.openset.fit_openmax` on training crops)."""
    config, weights = read_final(checkpoint)
    if config.get("baseline") != "dgt" or "defect_classes" not in config:
        raise ConfigError(f"{Path(checkpoint) / 'config.yaml'}: not a DGT run (baseline {config.get('baseline')!r})")
    cfg = DGTConfig(**{k: v for k, v in config.items() if k in DGTConfig.__dataclass_fields__})
    modules = build_downstream(cfg, len(config["defect_classes"]), int(config["channels"]))
    load_module_state(modules, weights, Path(checkpoint))
    return {k: m.to(device).eval() for k, m in modules.items()}


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], the input range of DIS and DFC (and of the benchmark's segmenters)."""
    return (images.float() + 1) / 2


def downstream_terms(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                     dis: torch.nn.Module | None, dfc: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Unweighted downstream losses of `images` ([-1, 1]): `dis` = dis_loss(DIS(x), masks) and `dfc`
    = CE(DFC(x), labels), each only for a module that is given. Gradients flow back into `images`
    (so into G when they are G's output) and into the modules' parameters."""
    x, out = unit_range(images), {}
    if dis is not None:
        out["dis"] = dis_loss(dis(x), masks)
    if dfc is not None:
        out["dfc"] = F.cross_entropy(dfc(x).float(), labels)
    return out


def downstream_g_loss(fake: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, dis: torch.nn.Module | None,
                      dfc: torch.nn.Module | None, cfg: DGTConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """G's downstream term `lambda_dis * dis_loss(DIS(fake), masks) + lambda_dfc * CE(DFC(fake), labels)`
    and its unweighted parts (`loss_g_dis`, `loss_g_dfc`); a module that is None or whose lambda is
    0 adds nothing (the total is then a zero without a graph)."""
    terms = downstream_terms(fake, masks, labels, dis if cfg.lambda_dis > 0 else None,
                             dfc if cfg.lambda_dfc > 0 else None)
    total = fake.new_zeros((), dtype=torch.float32)
    if "dis" in terms:
        total = total + cfg.lambda_dis * terms["dis"]
    if "dfc" in terms:
        total = total + cfg.lambda_dfc * terms["dfc"]
    return total, {f"loss_g_{k}": v for k, v in terms.items()}


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


class _Batches:
    """Per-step training batches: defect crops (+ labels), their filled inputs, clean crops and
    the transfer masks; depends only on (seed, step, process) like the samplers."""

    def __init__(self, cfg: DGTConfig, dataset, classes: list[str], channels: int):
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

    Per step: D's step, then DIS's and DFC's steps on the real crops and the detached generated
    crops, then G's step (region L1 + adversarial + the downstream terms through DIS and DFC).
    `aux_loss_fn(output, mask, labels) -> scalar` is an optional extra loss on all generated
    images, added to G's loss with weight `lambda_aux`.
    """
    cfg.validate()
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold,
                                     defect_types=cfg.defect_types, max_samples=cfg.max_samples)
    classes, channels = dataset.defect_types, 1 if dataset.grayscale else 3
    torch.manual_seed(cfg.seed)
    g, d = build_networks(cfg, len(classes), channels)
    modules = {"G": g, "D": d, **build_downstream(cfg, len(classes), channels)}
    lrs = {"G": cfg.lr_g, "D": cfg.lr_d, "DIS": cfg.lr_dis, "DFC": cfg.lr_dfc}
    optimizers = {k: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lrs[k],
                                      betas=(cfg.beta1, cfg.beta2) if k in ("G", "D") else (0.9, 0.999))
                  for k, m in modules.items()}
    h = GANHarness(cfg, modules, optimizers, name="dgt")
    h.resume(resume_from_checkpoint)
    g, d, opt_g, opt_d = h.modules["G"], h.modules["D"], h.optimizers["G"], h.optimizers["D"]
    dis, dfc = h.modules.get("DIS"), h.modules.get("DFC")
    downstream = [k for k in ("DIS", "DFC") if k in h.modules]
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
        fake_labels = torch.cat([x["labels"], x["t_labels"]])

        def critic(img: torch.Tensor, cond: torch.Tensor = cond) -> torch.Tensor:  # this step's masks
            with acc.autocast():
                return d(torch.cat([img, cond], dim=1) if cfg.d_mask else img)

        # discriminator step
        opt_d.zero_grad(set_to_none=True)
        loss_d, logs = discriminator_loss(cfg.loss, critic, real, fake, h.gamma())
        h.backward(loss_d)
        opt_d.step()

        # DIS and DFC steps: real crops + the (detached) generated ones, true masks and classes
        down_logs: dict[str, torch.Tensor] = {}
        if downstream:
            for key in downstream:
                h.optimizers[key].zero_grad(set_to_none=True)
            with acc.autocast():
                terms = downstream_terms(torch.cat([x["target"], fake.detach()]), torch.cat([x["masks"], cond]),
                                         torch.cat([x["labels"], fake_labels]), dis, dfc)
            h.backward(sum(terms.values()))
            for key in downstream:
                h.optimizers[key].step()
            down_logs.update({f"loss_{k}": v for k, v in terms.items()})

        # generator step (D's, DIS's and DFC's gradients from it are cleared before their next step)
        opt_g.zero_grad(set_to_none=True)
        rec = reconstruction_losses(recon.float(), x["target"], x["background"], x["masks"], cfg.band_width)
        adv = generator_loss(cfg.loss, critic, real, fake)
        loss_g = (cfg.lambda_fg * rec["loss_fg"] + cfg.lambda_bg * rec["loss_bg"]
                  + cfg.lambda_blend * rec["loss_blend"] + cfg.lambda_adv * adv)
        if downstream:  # lambda_dis * dis_loss(DIS(fake), mask) + lambda_dfc * CE(DFC(fake), class), into G
            with acc.autocast():
                down, parts = downstream_g_loss(fake, cond, fake_labels, dis, dfc, cfg)
            loss_g = loss_g + down
            down_logs.update(parts)
        if aux_loss_fn is not None:
            aux = aux_loss_fn(fake, cond, fake_labels)
            loss_g = loss_g + cfg.lambda_aux * aux
            logs["loss_aux"] = float(aux.detach())
        h.backward(loss_g)
        opt_g.step()

        values = {"loss_g": loss_g, "loss_g_adv": adv, **rec, **down_logs}
        h.log({**{k: float(v.detach()) for k, v in values.items()}, **logs})
        if h.due(cfg.sample_every):
            h.save_grid(sample_rows(x, recon, moved, cfg.grid_samples), "samples")
    return h.finish({"defect_classes": classes, "channels": channels, "modules": list(h.modules)})


def sample_rows(x: dict[str, torch.Tensor], recon: torch.Tensor, moved: torch.Tensor, n: int) -> list[list]:
    """Grid rows input | mask | output | target: first reconstruction rows, then transfer rows
    (clean input, a borrowed mask, the transferred defect, the real crop that mask came from)."""
    n = min(n, recon.shape[0])
    rows = [[gray_rgb(x["background"][i]), x["masks"][i], gray_rgb(recon[i]), gray_rgb(x["target"][i])]
            for i in range(n)]
    rows += [[gray_rgb(x["t_background"][i]), x["t_masks"][i], gray_rgb(moved[i]), gray_rgb(x["t_target"][i])]
             for i in range(n)]
    return rows
