"""Pretraining a small fabric inpainting base from scratch (``defectfill pretrain-base``).

Two phases under one step counter, resumable from ``training/checkpoint-<step>``:
1. the VAE (``AutoencoderKL``, f = 2 by default): L1 + MSE reconstruction + a small KL term on fabric crops;
   its latent ``scaling_factor`` is then set to 1 / std of the latents;
2. the 9-channel UNet and the text encoder, VAE frozen: v-prediction on zero-terminal-SNR
   betas, random inpainting masks, loss weighted up inside the mask, defect pixels of
   defective images and off-fabric pixels excluded, EMA of the UNet weights.
The output folder is a ``StableDiffusionInpaintPipeline`` (EMA UNet) plus ``training/``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from defectfill.benchmark.runner import held_out_split
from defectfill.data.datasets import load_reference_dataset
from defectfill.diffusion.base import data as bdata
from defectfill.diffusion.base.model import base_components, new_tokenizer, save_pipeline, sync_token_ids
from defectfill.errors import ConfigError, DataError, check_writable, output_errors
from defectfill.runinfo import write_run_info
from defectfill.tracking import truncate_metrics
from defectfill.training_utils import (
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    save_training_state,
    step_rng,
)

logger = logging.getLogger(__name__)

PROMPTS = ("a photo of fabric", "fabric", "a woven fabric", "a photo of the fabric", "")


@dataclass
class PretrainBaseConfig:
    """Every knob of a base pretraining run (defaults: the 2-core CPU recipe)."""

    data_dir: str = ""
    output_dir: str = ""
    seed: int = 0
    # the benchmark's held-out part of data_dir stays out (same split: eval_fraction, eval_split_seed);
    # the model card measures on its clean images. 0 trains on everything (card: the training images).
    eval_fraction: float = 0.3
    eval_split_seed: int = 1234
    mask_threshold: int = 128
    crop_size: int = 128
    resolution: int = 64
    # architecture
    vae_channels: list[int] = field(default_factory=lambda: [32, 64])
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    prediction_type: str = "v_prediction"
    # a base pipeline folder whose VAE, UNet and text encoder weights start the run (fine-tuning an
    # existing base, e.g. at another crop scale); the architecture fields above must match it
    init_from: str | None = None
    # phase 1: VAE
    vae_steps: int = 1000
    vae_batch_size: int = 16
    vae_learning_rate: float = 1.0e-3
    kl_weight: float = 1.0e-6
    # phase 2: UNet + text encoder
    unet_steps: int = 5000
    batch_size: int = 16
    learning_rate: float = 5.0e-4
    lr_warmup_steps: int = 200
    ema_decay: float = 0.999
    mask_loss_weight: float = 4.0
    mask_kinds: list[float] = field(default_factory=lambda: [0.35, 0.35, 0.3])  # box, stroke, defect shape
    prompt_dropout: float = 0.1
    # bookkeeping
    checkpointing_steps: int = 250
    checkpoints_total_limit: int = 2
    log_every: int = 25
    num_threads: int | None = None
    # model card
    card_crops: int = 48
    card_steps: int = 25
    # other bases the card measures on the same crops (default: init_from, when given)
    card_compare: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.resolution % 8 or self.resolution <= 0:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if not 0 < self.crop_size <= 256:
            raise ConfigError(f"crop_size must be in 1..256 (AITEX images are 256 high), got {self.crop_size}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ConfigError(f"prediction_type must be v_prediction or epsilon, got {self.prediction_type!r}")
        if len(self.mask_kinds) != 3 or min(self.mask_kinds) < 0 or sum(self.mask_kinds) <= 0:
            raise ConfigError(f"mask_kinds must be 3 non-negative weights (box, stroke, defect), got {self.mask_kinds}")
        if self.vae_steps < 0 or self.unet_steps < 0:
            raise ConfigError("vae_steps and unet_steps must be >= 0")

    @property
    def total_steps(self) -> int:
        return self.vae_steps + self.unet_steps


def held_out_ids(data_dir: Path, fraction: float, seed: int) -> set[str]:
    """The benchmark's held-out source ids of ``data_dir`` (``benchmark.runner.Context``'s split)."""
    return held_out_split(data_dir, fraction, seed) if fraction > 0 else set()


def to_rgb(pixels: np.ndarray) -> torch.Tensor:
    """(B, H, W) grey in [-1, 1] → (B, 3, H, W) float tensor."""
    return torch.from_numpy(pixels)[:, None].expand(-1, 3, -1, -1).contiguous()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w · (pred − target)²) / (sum(w) · C): the per-pixel weighted MSE (w broadcast over channels)."""
    w = weight.expand_as(pred)
    return (w * (pred - target) ** 2).sum() / w.sum().clamp_min(1e-8)


def vae_loss(vae, x: torch.Tensor, gen: torch.Generator, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """L1 + MSE reconstruction plus ``kl_weight`` · KL(q(z|x) ‖ N(0, I)) (mean per element)."""
    dist = vae.encode(x).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(x.device)
    rec = vae.decode(z).sample
    l1, mse = (rec - x).abs().mean(), F.mse_loss(rec, x)
    kl = dist.kl().mean() / dist.mean[0].numel()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


def inpaint_loss(unet, vae, scheduler, prompt_embeds: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
                 exclude: torch.Tensor, gen: torch.Generator, mask_loss_weight: float) -> torch.Tensor:
    """The inpainting diffusion loss: the UNet sees [noisy latent, mask, masked-image latent] (the
    SD-inpainting layout) and predicts the scheduler's target; squared error weighted
    1 + ``mask_loss_weight`` inside the (latent, max-pooled) mask, 0 on excluded pixels."""
    sf = vae.config.scaling_factor
    with torch.no_grad():
        d = vae.encode(torch.cat([x, x * (mask < 0.5)])).latent_dist
        lat = (d.mean + d.std * torch.randn(d.mean.shape, generator=gen).to(x.device)) * sf
    latents, masked_latents = lat.chunk(2)
    size = latents.shape[-2:]
    factor = x.shape[-1] // size[-1]
    mask_lat, excl_lat = F.max_pool2d(mask, factor), F.max_pool2d(exclude, factor)
    noise = torch.randn(latents.shape, generator=gen).to(x.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=gen).to(x.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(torch.cat([noisy, mask_lat, masked_latents], 1), t, prompt_embeds).sample
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    weight = (1 + mask_loss_weight * mask_lat) * (1 - excl_lat)
    return masked_mse(pred.float(), target.float(), weight)


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10 %."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


# ---- checkpoints: every weight, the EMA and the phase's optimiser in safetensors + JSON ----

def _state(models: dict[str, torch.nn.Module], ema) -> dict[str, torch.Tensor]:
    out = {f"{k}.{n}": t.detach().float().cpu().contiguous() for k, m in models.items()
           for n, t in m.state_dict().items()}
    if ema is not None:
        out.update({f"ema.{i}": p.detach().float().cpu().contiguous() for i, p in enumerate(ema.shadow_params)})
    return out


def save_checkpoint(folder: Path, models, ema, optimizer, step: int, extra: dict) -> None:
    save_training_state(folder, _state(models, ema), {"main": optimizer} if optimizer is not None else {}, step,
                        {"ema_step": ema.optimization_step if ema else None, **extra})


def load_checkpoint(folder: Path, models, ema, optimizer) -> dict:
    state, meta = load_training_state(folder, {"main": optimizer} if optimizer is not None else {})
    for k, m in models.items():
        m.load_state_dict({n[len(k) + 1:]: t for n, t in state.items() if n.startswith(k + ".")})
    if ema is not None and meta.get("ema_step") is not None:
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(state[f"ema.{i}"])
        ema.optimization_step = meta["ema_step"]
    return meta


def checkpoint_phase(folder: Path) -> str:
    return json.loads((folder / "trainer_state.json").read_text())["phase"]


# ---- the run ----

def check_data(cfg: PretrainBaseConfig) -> tuple[Path, set[str], set[str]]:
    data = Path(cfg.data_dir)
    if not cfg.data_dir or not (data / "images").is_dir() and not (data / "good").is_dir():
        raise DataError(f"{cfg.data_dir or '--data-dir'}: not a reference data folder (needs images/ + masks/ or good/)")
    held = held_out_ids(data, cfg.eval_fraction, cfg.eval_split_seed)
    all_ids = {p.stem for sub in ("images", "good") if (data / sub).is_dir() for p in (data / sub).iterdir()
               if p.is_file()}
    return data, all_ids - held, held


def check_init_from(folder: str) -> Path:
    """``init_from`` as a base pipeline folder (``model_index.json`` + vae/unet/text_encoder), else ConfigError."""
    path = Path(folder).expanduser()
    missing = [p for p in ("model_index.json", "vae", "unet", "text_encoder") if not (path / p).exists()]
    if missing:
        raise ConfigError(f"init_from: {path} is not a base pipeline folder (missing {', '.join(missing)})")
    return path


def load_init_weights(folder: Path, models: dict[str, torch.nn.Module]) -> float:
    """Copy the VAE, UNet and text encoder weights of the base in ``folder`` into ``models`` (strict: a
    different architecture is a ConfigError naming the part); returns the base's VAE scaling factor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    loaders = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "text_encoder": CLIPTextModel}
    scaling = 1.0
    for part, cls in loaders.items():
        src = cls.from_pretrained(folder, subfolder=part)
        try:
            models[part].load_state_dict(src.state_dict(), strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise ConfigError(f"init_from: {folder / part} does not match this config's architecture "
                              f"({first}); set the architecture fields to the base's") from None
        if part == "vae":
            scaling = float(src.config.scaling_factor)
    return scaling


def pretrain_base(cfg: PretrainBaseConfig, resume: bool = True, overwrite: bool = False) -> Path:
    """Train (or resume) a base into ``cfg.output_dir``; returns the pipeline folder."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if not cfg.output_dir:
        raise ConfigError("--output-dir: the folder to write the base model to is required")
    out = Path(cfg.output_dir)
    data, train_ids, held = check_data(cfg)
    init_from = check_init_from(cfg.init_from) if cfg.init_from else None
    if (out / "model_index.json").exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a finished base model; pass --overwrite to train it again")
    check_writable(out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ref = load_reference_dataset(data, mask_threshold=cfg.mask_threshold)
    images = bdata.load_fabric_images(ref, train_ids)
    if not images:
        raise DataError(f"{data}: no training image left after the held-out split (eval_fraction {cfg.eval_fraction})")
    shapes = bdata.defect_shapes(ref, train_ids)
    run = out / "training"
    accelerator = Accelerator(project_dir=str(run))
    device, proc = accelerator.device, accelerator.process_index

    tokenizer = new_tokenizer(run / "tokenizer")
    parts = base_components(cfg.vae_channels, cfg.unet_channels, cfg.layers_per_block, cfg.attention_head_dim,
                            cfg.text_hidden, cfg.text_layers, prediction_type=cfg.prediction_type,
                            sample_size=cfg.resolution, vocab_size=len(tokenizer), seed=cfg.seed)
    vae, unet, text_encoder, scheduler = parts["vae"], parts["unet"], parts["text_encoder"], parts["scheduler"]
    sync_token_ids(text_encoder, tokenizer)
    models = {"vae": vae, "unet": unet, "text_encoder": text_encoder}
    found = list_checkpoints(run) if resume else []
    if overwrite and found:
        import shutil
        for f in found:
            shutil.rmtree(f)
        found = []
    meta = json.loads((found[-1] / "trainer_state.json").read_text()) if found else {"global_step": 0}
    step = int(meta["global_step"])
    if init_from is not None and not found:
        meta["scaling_factor"] = load_init_weights(init_from, models)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)  # after init_from
    write_run_info(run, asdict(cfg), cfg.seed, held_out_ids=sorted(held), train_images=len(images),
                   defect_shapes=len(shapes))
    metrics_path = run / "metrics.jsonl"
    truncate_metrics(metrics_path, step)  # the log goes back to the checkpoint

    prompt_ids = tokenizer(list(PROMPTS), padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids.to(device)
    bar = tqdm(total=cfg.total_steps, initial=step, desc="pretrain-base", disable=not accelerator.is_main_process)
    log = metrics_path.open("a")

    def phase_loop(phase: str, first: int, last: int) -> None:
        nonlocal step
        if step >= last:
            return
        if phase == "vae":
            vae.train().requires_grad_(True)
            params = list(vae.parameters())
            opt = torch.optim.AdamW(params, lr=cfg.vae_learning_rate, weight_decay=0.0)
            lam = lr_lambda(min(100, cfg.vae_steps // 10), cfg.vae_steps)
        else:
            vae.eval().requires_grad_(False)
            unet.train(), text_encoder.train()
            params = list(unet.parameters()) + list(text_encoder.parameters())
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-2)
            lam = lr_lambda(cfg.lr_warmup_steps, cfg.unet_steps)
        latest = list_checkpoints(run)[-1:] if step else []
        if latest and checkpoint_phase(latest[0]) == phase:
            load_checkpoint(latest[0], models, ema if phase == "unet" else None, opt)
            logger.info("resumed from %s (step %d)", latest[0], step)
        elif latest:  # the VAE phase's last checkpoint: its weights, a fresh optimiser for the UNet phase
            load_checkpoint(latest[0], models, None, None)
        while step < last:
            rng, gen = step_rng(cfg.seed, step, proc)
            local = step - first
            for g in opt.param_groups:
                g["lr"] = (cfg.vae_learning_rate if phase == "vae" else cfg.learning_rate) * lam(local)
            if phase == "vae":
                b = bdata.fabric_batch(images, shapes, cfg.vae_batch_size, cfg.crop_size, cfg.resolution, rng,
                                       cfg.mask_kinds)
                loss, parts_log = vae_loss(vae, to_rgb(b["pixels"]).to(device), gen, cfg.kl_weight)
            else:
                b = bdata.fabric_batch(images, shapes, cfg.batch_size, cfg.crop_size, cfg.resolution, rng,
                                       cfg.mask_kinds)
                which = torch.from_numpy(rng.integers(0, len(PROMPTS), cfg.batch_size)).to(device)
                which[torch.from_numpy(rng.random(cfg.batch_size) < cfg.prompt_dropout).to(device)] = len(PROMPTS) - 1
                embeds = text_encoder(prompt_ids[which])[0]
                loss = inpaint_loss(unet, vae, scheduler, embeds, to_rgb(b["pixels"]).to(device),
                                    torch.from_numpy(b["masks"][:, None].astype(np.float32)).to(device),
                                    torch.from_numpy(b["exclude"][:, None].astype(np.float32)).to(device),
                                    gen, cfg.mask_loss_weight)
                parts_log = {}
            accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if phase == "unet":
                ema.step(unet.parameters())
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == last:
                rec = {"step": step, "phase": phase, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], **parts_log}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(phase=phase, loss=f"{loss.item():.4f}")
            if (step % cfg.checkpointing_steps == 0 or step == last) and accelerator.is_main_process:
                with output_errors(run, "rerun the same command to resume from the last checkpoint"):
                    save_checkpoint(run / f"checkpoint-{step}", models, ema if phase == "unet" else None, opt, step,
                                    {"phase": phase, "scaling_factor": vae.config.scaling_factor})
                    prune_checkpoints(run, cfg.checkpoints_total_limit)
        if phase == "vae":
            set_scaling_factor(vae, images, shapes, cfg, device)
            with output_errors(run, "rerun the same command to resume"):
                save_checkpoint(run / f"checkpoint-{step}", models, None, opt, step,
                                {"phase": "vae", "scaling_factor": vae.config.scaling_factor})

    if meta.get("scaling_factor"):
        vae.register_to_config(scaling_factor=meta["scaling_factor"])
    try:
        phase_loop("vae", 0, cfg.vae_steps)
        phase_loop("unet", cfg.vae_steps, cfg.total_steps)
    finally:  # an error line then starts on its own line, after the bar
        bar.close()
        log.close()
    if accelerator.is_main_process:
        ema.copy_to(unet.parameters())
        with output_errors(out, "rerun the same command to write the model from the last checkpoint"):
            save_pipeline(out, unet.eval(), vae.eval(), text_encoder.eval(), tokenizer, scheduler)
    accelerator.wait_for_everyone()
    return out


@torch.no_grad()
def set_scaling_factor(vae, images, shapes, cfg: PretrainBaseConfig, device) -> float:
    """SD's rule: scaling_factor = 1 / std of latents of training crops (a fixed seed)."""
    b = bdata.fabric_batch(images, shapes, 64, cfg.crop_size, cfg.resolution, np.random.default_rng(cfg.seed))
    z = vae.encode(to_rgb(b["pixels"]).to(device)).latent_dist.mean
    sf = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=sf)
    return sf
