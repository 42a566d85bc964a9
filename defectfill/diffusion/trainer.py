"""DefectFill fine-tuning: the training step, checkpoints and the run loop (under Accelerate).

All randomness of a step (crops, flips, random boxes, noise, timesteps) is drawn from
generators seeded by (seed, micro-step, process index), so a run resumed from a checkpoint
replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from defectfill.config import config_fingerprint, config_to_dict, dump_config
from defectfill.data.datasets import DefectCropSampler, load_reference_dataset
from defectfill.data.masks import random_box_masks
from defectfill.diffusion import losses
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.diffusion.models.attention import AttentionStore, install_attention_capture
from defectfill.diffusion.models.lora import (
    add_lora,
    add_placeholder_token,
    attach_placeholder_embedding,
    save_defectfill_lora,
)
from defectfill.diffusion.models.pipeline import (
    apply_speed_options,
    check_inpainting_unet,
    load_training_components,
    resolve_model,
)
from defectfill.errors import ConfigError, check_writable, output_errors
from defectfill.runinfo import atomic_directory, atomic_write_text, write_run_info
from defectfill.tracking import JSONLTracker, truncate_metrics
from defectfill.training_utils import (
    CHECKPOINT_RE,
    cast_training_params,
    list_checkpoints,
    load_trainable_state,
    load_training_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
    step_rng,
    trainable_state,
)

logger = logging.getLogger(__name__)

_RESUMABLE_CHANGES = {"max_train_steps", "output_dir", "checkpointing_steps", "checkpoints_total_limit", "log_with",
                      "log_every", "data_dir", "model", "overwrite"}
RESUME_HINT = "rerun with --resume_from_checkpoint latest to resume from the last complete checkpoint"
# What a run writes into its folder; --overwrite removes exactly these (never anything else there).
_RUN_FILES = ("DONE", "run_info.json", "config.yaml")
_RUN_DIRS = ("lora", "logs")
_RUN_TEMP_RE = re.compile(r"^\.(checkpoint-\d+|lora)\.tmp-\d+$")


@dataclass
class Batch:
    pixel_values: torch.Tensor  # (B, 3, R, R) in [-1, 1]
    masks: torch.Tensor  # (B, 1, R, R) real defect masks in {0, 1}
    box_masks: torch.Tensor  # (B, 1, R, R) random-box masks for the object loss
    generator: torch.Generator  # noise, timesteps and VAE sampling of this micro-step
    crop_keys: list | None = None  # one hashable key per crop when the crop is a function of it (latent caching)
    ids: list | None = None  # reference sample id of each crop


def make_batch(sampler, cfg: DefectFillTrainConfig, micro_step: int, process_index: int) -> Batch:
    rng, generator = step_rng(cfg.seed, micro_step, process_index)
    crops = sampler.batch(micro_step, process_index, cfg.train_batch_size)
    n, _, h, w = crops["masks"].shape
    boxes = random_box_masks(n, h, w, num_boxes=cfg.num_boxes, min_frac=cfg.box_min_frac,
                             max_frac=cfg.box_max_frac, rng=rng)
    return Batch(crops["pixel_values"], crops["masks"], boxes, generator, crops.get("keys"), crops.get("ids"))


class ReferenceLatentCache:
    """VAE posteriors of reference crops, and of the same crops with their defect masked out, keyed
    by the crop key. Only the posterior parameters (mean, log-variance) are kept; the latents are
    still drawn from them with the step's generator, so a cached step draws the same noise as an
    uncached one. Saves two of every three VAE encodes once each key has been seen."""

    def __init__(self) -> None:
        self.entries: dict = {}
        self.hits = 0
        self.misses = 0

    def posteriors(self, vae, keys: list, pixels: torch.Tensor, defect_masked: torch.Tensor):
        """(posterior parameters of `pixels`, of `defect_masked`), each (B, 2C, h, w), encoding only
        the crops whose key is new."""
        new = list(dict.fromkeys(k for k in keys if k not in self.entries))
        missed = sum(1 for k in keys if k in new)
        self.misses += missed
        self.hits += len(keys) - missed
        if new:
            rows = torch.tensor([keys.index(k) for k in new], device=pixels.device)
            params = vae.encode(torch.cat([pixels[rows], defect_masked[rows]])).latent_dist.parameters
            for j, k in enumerate(new):
                self.entries[k] = (params[j], params[len(new) + j])
        return (torch.stack([self.entries[k][0] for k in keys]), torch.stack([self.entries[k][1] for k in keys]))


def token_position(input_ids: torch.Tensor, token_id: int) -> int:
    hits = (input_ids == token_id).nonzero()
    if len(hits) != 1:
        raise ConfigError(f"the prompt must contain the placeholder token exactly once (found {len(hits)})")
    return int(hits[0, -1])


def compute_losses(unet, text_encoder, vae, noise_scheduler, store, prompt_ids: torch.Tensor, token_index: int,
                   batch: Batch, cfg: DefectFillTrainConfig, weight_dtype: torch.dtype,
                   latent_cache: ReferenceLatentCache | None = None) -> dict[str, torch.Tensor]:
    """One forward pass for both branches: items [0, B) are the defect branch (real mask M,
    defect prompt), items [B, 2B) the object branch (random boxes, object prompt).

    `prompt_ids` holds the two prompts (encoded once, rows repeated per branch) or one row per
    UNet sample (2B). With `latent_cache` and `batch.crop_keys`, the crop and defect-masked crop
    posteriors come from the cache."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    device = prompt_ids.device
    gen = batch.generator
    pixels = batch.pixel_values.to(device, weight_dtype)
    mask = batch.masks.to(device)
    cond_mask = torch.cat([mask, batch.box_masks.to(device)])
    b = pixels.shape[0]
    with torch.no_grad():
        scale = vae.config.scaling_factor
        masked = torch.cat([pixels, pixels]) * (1 - cond_mask.to(weight_dtype))
        if latent_cache is not None and batch.crop_keys is not None:
            ref, defect_masked = latent_cache.posteriors(vae, batch.crop_keys, pixels, masked[:b])
            box_masked = vae.encode(masked[b:]).latent_dist.parameters
            latents = DiagonalGaussianDistribution(ref).sample(gen) * scale
            masked_latents = DiagonalGaussianDistribution(torch.cat([defect_masked, box_masked])).sample(gen) * scale
        else:
            latents = vae.encode(pixels).latent_dist.sample(gen) * scale
            masked_latents = vae.encode(masked).latent_dist.sample(gen) * scale
    latents = torch.cat([latents, latents])
    lat_hw = latents.shape[-2:]
    noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2 * b,), generator=gen).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    unet_in = torch.cat([noisy, losses.latent_mask(cond_mask, lat_hw).to(latents.dtype), masked_latents], dim=1)

    text = text_encoder(prompt_ids)[0]  # (2, L, D): defect prompt, object prompt (or one row per sample)
    if text.shape[0] != 2 * b:
        text = text[torch.tensor([0] * b + [1] * b, device=device)]

    store.start(torch.full((b,), token_index, dtype=torch.long))
    try:
        pred = unet(unet_in, t, text).sample
    finally:
        store.stop()
    attn_map = store.aggregate(*lat_hw)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    m = losses.latent_mask(mask, lat_hw)
    l_def = losses.defect_loss(pred[:b], target[:b], m)
    l_obj = losses.object_loss(pred[b:], target[b:], m, cfg.alpha, cfg.object_loss_weighting)
    l_attn = losses.attention_loss(attn_map, m)
    total = losses.total_loss(l_def, l_obj, l_attn, cfg.lambda_def, cfg.lambda_obj, cfg.lambda_attn)
    return {"loss": total, "loss_def": l_def, "loss_obj": l_obj, "loss_attn": l_attn}


# ---- checkpoints: training_utils' one format + the LoRA export ----

def save_checkpoint(directory: Path, models: dict, optimizer, lr_scheduler, global_step: int,
                    cfg: DefectFillTrainConfig, lora_writer) -> None:
    """Write `checkpoint-<step>` atomically: trainable tensors, optimiser, scheduler, LoRA export."""
    extra = {"lr_scheduler": lr_scheduler.state_dict(), "config": json.loads(config_fingerprint(cfg))}
    save_training_state(directory, trainable_state(models), {"main": optimizer}, global_step, extra,
                        writer=lambda tmp: lora_writer(tmp / "lora"))


def load_checkpoint(directory: Path, models: dict, optimizer, lr_scheduler, cfg: DefectFillTrainConfig) -> int:
    tensors, state = load_training_state(directory, {"main": optimizer})
    now = json.loads(config_fingerprint(cfg))
    changed = sorted(k for k in now if k not in _RESUMABLE_CHANGES and state["config"].get(k) != now[k])
    if changed:
        logger.warning("resuming %s with changed config keys: %s", directory, ", ".join(changed))
    load_trainable_state(models, tensors, directory)
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    return int(state["global_step"])


# ---- the run folder: refuse to train over a run by accident; --overwrite clears it ----

def check_run_folder(output_dir: Path, resume_from_checkpoint: str | None, overwrite: bool) -> None:
    """Refuse (ConfigError, one line) to start from scratch in a folder that holds a run: a finished
    one (`DONE` or a final `lora/`) or an unfinished one with checkpoints. Resuming is what
    --resume_from_checkpoint is for; --overwrite (config `overwrite: true`) replaces the old run."""
    if overwrite and resume_from_checkpoint:
        raise ConfigError(f"--overwrite and --resume_from_checkpoint {resume_from_checkpoint} contradict each other: "
                          f"--overwrite clears {output_dir}'s checkpoints; pass one of them")
    if overwrite or resume_from_checkpoint or not output_dir.is_dir():
        return
    if (output_dir / "DONE").exists() or (output_dir / "lora").exists():
        raise ConfigError(f"{output_dir}: already holds a finished run; pass --overwrite to replace it, "
                          f"or another output_dir")
    found = list_checkpoints(output_dir)
    if found:
        raise ConfigError(f"{output_dir}: holds an unfinished run ({found[-1].name}); pass "
                          f"--resume_from_checkpoint latest to continue it, --overwrite to replace it, "
                          f"or another output_dir")


def clear_run(output_dir: Path) -> None:
    """Remove an old run's checkpoints, logs, final LoRA and run records from ``output_dir`` (for
    --overwrite), so nothing stale mixes into the new run. Other files there are left alone."""
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        name = path.name
        if path.is_dir() and (name in _RUN_DIRS or CHECKPOINT_RE.match(name) or _RUN_TEMP_RE.match(name)):
            shutil.rmtree(path)
        elif name in _RUN_FILES or name.startswith(tuple(f"{f}.tmp-" for f in _RUN_FILES)):
            path.unlink()


def check_crop_size(dataset, cfg: DefectFillTrainConfig) -> None:
    """A crop larger than every side of every reference image would be mostly mirrored padding
    (`sample_defect_crop` reflection-pads short axes): refuse it, naming the data and the largest
    image. Crops longer than some images' short side are padded there: warn."""
    if not dataset.samples:
        return
    largest = max(dataset.samples, key=lambda s: max(s.image.shape[:2]))
    h, w = largest.image.shape[:2]
    if cfg.crop_size > max(h, w):
        raise ConfigError(f"crop_size {cfg.crop_size} is larger than every reference image in {cfg.data_dir} "
                          f"(largest: {largest.image_path.name}, {w} wide x {h} high); set crop_size <= {max(h, w)}")
    padded = sum(1 for s in dataset.samples if min(s.image.shape[:2]) < cfg.crop_size)
    if padded:
        logger.warning("crop_size %d exceeds the short side of %d of %d reference images in %s: their crops are "
                       "reflection-padded", cfg.crop_size, padded, len(dataset.samples), cfg.data_dir)


# ---- the run ----

def train(cfg: DefectFillTrainConfig, resume_from_checkpoint: str | None = None) -> Path:
    """Fine-tune DefectFill as configured; returns the folder with the final LoRA weights."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    cfg.validate()
    output_dir = Path(cfg.output_dir)
    # Cheap checks first: a bad output folder, model folder, data file or crop size fails before any
    # weights load, and before anything is written.
    check_writable(output_dir, "run folder")
    check_run_folder(output_dir, resume_from_checkpoint, cfg.overwrite)
    model = resolve_model(cfg.model)
    check_inpainting_unet(model)
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold,
                                     defect_types=cfg.defect_types, max_samples=cfg.max_samples)
    check_crop_size(dataset, cfg)
    resume_dir = resolve_resume(output_dir, resume_from_checkpoint)

    trackers = [JSONLTracker(output_dir / "logs", RESUME_HINT) if name == "jsonl" else name for name in cfg.log_with]
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    try:
        return _run(accelerator, cfg, model, dataset, resume_dir, resume_from_checkpoint)
    finally:
        accelerator.end_training()
        # Let a later in-process run choose another precision (Accelerate keeps a singleton).
        AcceleratorState._reset_state()


@dataclass
class TrainingSetup:
    """The models of a DefectFill run, ready for `compute_losses`: LoRA on the UNet (and text encoder),
    the [V*] embedding trainable, attention capture installed, frozen parts in `weight_dtype`."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    noise_scheduler: object
    store: object  # AttentionStore
    placeholder: object  # the trainable [V*] embedding(s)
    token_id: int  # the first (or only) placeholder token's id
    tokens: list[str] | None = None  # every placeholder token (one per defect type with token_per_type)
    token_ids: list[int] | None = None


def prepare_models(cfg: DefectFillTrainConfig, model: str, device, weight_dtype: torch.dtype,
                   tokens: list[str] | None = None) -> TrainingSetup:
    """Load `model` and set it up for DefectFill training as `train` does (used by the trainer and
    bench/speed/bench_train_step.py); `tokens` (default: the one `placeholder_token`) are added and learned."""
    parts = load_training_components(model, cfg.revision, cfg.variant, torch_dtype=weight_dtype)
    tokenizer, text_encoder, vae, unet = parts.tokenizer, parts.text_encoder, parts.vae, parts.unet
    tokens = list(tokens or [cfg.placeholder_token])
    token_ids = [add_placeholder_token(tokenizer, text_encoder, t, cfg.initializer_token) for t in tokens]
    for m in (unet, text_encoder, vae):
        m.requires_grad_(False)
        m.to(device)
    if cfg.enable_xformers:
        unet.enable_xformers_memory_efficient_attention()
    store = AttentionStore()
    install_attention_capture(unet, store)  # after xformers, which would replace it
    add_lora(unet, text_encoder, cfg.lora_rank, cfg.lora_alpha, cfg.train_text_encoder)
    placeholder = attach_placeholder_embedding(text_encoder, token_ids if len(token_ids) > 1 else token_ids[0])
    cast_training_params([unet, text_encoder])  # trainable tensors in fp32, frozen ones in weight_dtype
    placeholder.vector.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            enable = getattr(text_encoder, "activation_checkpointing_enable", None) or \
                text_encoder.gradient_checkpointing_enable
            enable()
    apply_speed_options(unet, vae, cfg.channels_last, cfg.compile_unet)
    return TrainingSetup(tokenizer, text_encoder, vae, unet, parts.noise_scheduler, store, placeholder, token_ids[0],
                         tokens, token_ids)


def build_optimizer(cfg: DefectFillTrainConfig, unet, text_encoder, placeholder) -> torch.optim.Optimizer:
    """AdamW over the UNet LoRA, the text-encoder LoRA and the [V*] embedding (no weight decay)."""
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.learning_rate_unet}]
    text_lora = [p for n, p in text_encoder.named_parameters() if p.requires_grad and "lora_" in n]
    if text_lora:
        groups.append({"params": text_lora, "lr": cfg.learning_rate_text})
    groups.append({"params": [placeholder.vector], "weight_decay": 0.0,
                   "lr": cfg.learning_rate_token or cfg.learning_rate_text})
    return torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def tokenize_prompts(tokenizer, cfg: DefectFillTrainConfig, token_id: int) -> tuple[torch.Tensor, int]:
    """(ids of [defect prompt, object prompt], position of [V*] in the defect prompt), tokenised once."""
    table, token_index = tokenize_prompt_table(tokenizer, cfg, [cfg.placeholder_token], [token_id])
    return table[0], token_index


def tokenize_prompt_table(tokenizer, cfg: DefectFillTrainConfig, tokens: list[str],
                          token_ids: list[int]) -> tuple[torch.Tensor, int]:
    """(N, 2, L) ids of [defect prompt, object prompt] per token, and the position of the token in the
    defect prompt (the attention loss's index, the same for every token)."""
    rows, index = [], None
    for token, token_id in zip(tokens, token_ids):
        ids = tokenizer(list(cfg.prompts(token)), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        at = token_position(ids[0], token_id)
        token_position(ids[1], token_id)
        if index is not None and at != index:
            raise ConfigError(f"token {token} sits at position {at} of the defect prompt, {tokens[0]} at {index}: "
                              "every per-type token must be one token at the same place")
        index = at
        rows.append(ids)
    return torch.stack(rows), index


def batch_prompt_ids(table: torch.Tensor, rows: list[int] | None) -> torch.Tensor:
    """The prompt ids `compute_losses` takes: the two shared prompts (2, L) when ``rows`` is None, else
    one row per UNet sample (2B, L): the defect prompt of each sample's token, then its object prompt."""
    if rows is None:
        return table[0]
    index = torch.tensor(rows, device=table.device)
    return torch.cat([table[index, 0], table[index, 1]])


def _run(accelerator, cfg: DefectFillTrainConfig, model: str, dataset, resume_dir: Path | None,
         resume_from_checkpoint: str | None) -> Path:
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    output_dir = Path(cfg.output_dir)
    set_seed(cfg.seed)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    tokens_by_type = cfg.tokens_by_type(dataset.defect_types)
    setup = prepare_models(cfg, model, accelerator.device, weight_dtype, list(tokens_by_type.values()) or None)
    tokenizer, text_encoder, vae, unet = setup.tokenizer, setup.text_encoder, setup.vae, setup.unet
    store, placeholder, noise_scheduler = setup.store, setup.placeholder, setup.noise_scheduler
    optimizer = build_optimizer(cfg, unet, text_encoder, placeholder)
    n_proc = accelerator.num_processes
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * n_proc,
                                 num_training_steps=cfg.max_train_steps * n_proc)
    unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    models = {"unet": accelerator.unwrap_model(unet), "text_encoder": accelerator.unwrap_model(text_encoder)}

    tokens, token_ids = setup.tokens, setup.token_ids
    defect_prompt, object_prompt = cfg.prompts(tokens[0])
    prompt_table, token_index = tokenize_prompt_table(tokenizer, cfg, tokens, token_ids)
    prompt_table = prompt_table.to(accelerator.device)
    token_row = ({s.id: tokens.index(tokens_by_type[s.defect_type]) for s in dataset.samples}
                 if tokens_by_type else None)
    sampler = DefectCropSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed, hflip=cfg.hflip, vflip=cfg.vflip)
    latent_cache = None
    if cfg.cache_reference_latents and sampler.whole_image_crops:
        latent_cache = ReferenceLatentCache()
        logger.info("every reference image fits in one %d px crop: caching their VAE latents", cfg.crop_size)

    metadata = {"base_model": cfg.model, "object_name": cfg.object_name, "defect_prompt": defect_prompt,
                "object_prompt": object_prompt, "resolution": cfg.resolution, "crop_size": cfg.crop_size,
                "defect_types": dataset.defect_types, "grayscale": dataset.grayscale, "data_dir": str(cfg.data_dir)}
    if tokens_by_type:
        metadata["tokens_by_type"] = tokens_by_type
        metadata["defect_prompts_by_type"] = {t: cfg.prompts(tok)[0] for t, tok in tokens_by_type.items()}

    def write_lora(directory: Path) -> None:
        save_defectfill_lora(directory, models["unet"], models["text_encoder"], tokens, token_ids, metadata)

    global_step = 0
    if resume_dir is not None:
        global_step = load_checkpoint(resume_dir, models, optimizer, lr_scheduler, cfg)
        accelerator.print(f"resumed from {resume_dir} at step {global_step}")
    elif resume_from_checkpoint:
        accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")

    if accelerator.is_main_process:
        with output_errors(output_dir, RESUME_HINT):
            if cfg.overwrite:
                clear_run(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, output_dir / "config.yaml")
            # Steps after the one we start from were logged by the run that died: drop them, so
            # the resumed run logs each step once.
            truncate_metrics(output_dir / "logs" / "metrics.jsonl", global_step)
        accelerator.init_trackers("defectfill", config={k: v for k, v in config_to_dict(cfg).items()
                                                          if isinstance(v, (int, float, str, bool))})

    progress = tqdm(total=cfg.max_train_steps, initial=global_step, desc="DefectFill",
                    disable=not accelerator.is_local_main_process)
    unet.train()
    text_encoder.train()
    accum = cfg.gradient_accumulation_steps
    try:  # closing the bar ends its line, so an error line is printed on its own line
        while global_step < cfg.max_train_steps:
            logs: dict[str, float] = {}
            for micro in range(accum):
                batch = make_batch(sampler, cfg, global_step * accum + micro, accelerator.process_index)
                with accelerator.accumulate(unet, text_encoder):
                    prompt_ids = batch_prompt_ids(prompt_table, None if token_row is None else
                                                  [token_row[i] for i in batch.ids])
                    out = compute_losses(unet, text_encoder, vae, noise_scheduler, store, prompt_ids,
                                         token_index, batch, cfg, weight_dtype, latent_cache)
                    accelerator.backward(out["loss"])
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in out.items():
                    logs[k] = logs.get(k, 0.0) + float(v.detach()) / accum
            if not all(math.isfinite(v) for v in logs.values()):
                raise FloatingPointError(f"non-finite loss at step {global_step}: {logs}")
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            if global_step % cfg.log_every == 0:
                logs["lr_unet"] = lr_scheduler.get_last_lr()[0]
                accelerator.log(logs, step=global_step)
            if global_step % cfg.checkpointing_steps == 0 and global_step < cfg.max_train_steps:
                if accelerator.is_main_process:
                    checkpoint = output_dir / f"checkpoint-{global_step}"
                    with output_errors(checkpoint, RESUME_HINT):  # atomic: complete or absent
                        save_checkpoint(checkpoint, models, optimizer, lr_scheduler, global_step, cfg, write_lora)
                        prune_checkpoints(output_dir, cfg.checkpoints_total_limit)
                accelerator.wait_for_everyone()
    finally:
        progress.close()

    accelerator.wait_for_everyone()
    final_dir = output_dir / "lora"
    if accelerator.is_main_process:
        run = {"global_step": global_step, "num_processes": accelerator.num_processes,
               "resumed_from": str(resume_dir) if resume_dir else None, "reference_samples": len(dataset),
               "latent_cache": None if latent_cache is None else
               {"crops": len(latent_cache.entries), "hits": latent_cache.hits, "misses": latent_cache.misses}}
        with output_errors(final_dir, RESUME_HINT):  # atomic: the final LoRA is complete or absent
            with atomic_directory(final_dir) as tmp:
                write_lora(tmp)
                write_run_info(tmp, config_to_dict(cfg), cfg.seed, **run)  # travels with the weights
            write_run_info(output_dir, config_to_dict(cfg), cfg.seed, lora_dir=str(final_dir), **run)
            atomic_write_text(final_dir.parent / "DONE", f"{global_step}\n")
    return final_dir
