"""DefectFill's synthesizer: a fine-tuned LoRA on the inpainting base turns (clean image, mask, seed)
into a defect image: a window around the mask resized to the model resolution, K candidates in one
batched pipeline call, Low-Fidelity Selection, the chosen one pasted back and composited so that
pixels outside a dilation of the mask stay bit-identical to the clean image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from defectfill.config import GenerateConfig, load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.diffusion.models.lora import EMBEDS_NAME, read_lora_metadata
from defectfill.diffusion.models.pipeline import (
    apply_speed_options,
    check_inpainting_unet,
    check_lora_base,
    load_inpaint_pipeline,
    read_text_encoder_config,
    resolve_model,
)
from defectfill.diffusion.models.tiny import TINY_MODEL_NAME, ensure_tiny_model
from defectfill.diffusion.selection import low_fidelity_selection
from defectfill.diffusion.trainer import train
from defectfill.errors import ConfigError, ModelError, check_writable
from defectfill.generation.compositing import resize_mask, windowed
from defectfill.generation.run import derive_seed, file_sha256
from defectfill.generators import Generator
from defectfill.metrics.distances import load_perceptual
from defectfill.runinfo import atomic_write_text

GENERATOR_NAME = "defectfill"


def describe_base_model(model: str) -> str:
    """One line for reports: what the base model at `model` is."""
    index = Path(model) / "model_index.json"
    tiny = "tiny" in Path(model).name or (Path(model) / "tiny_model.json").is_file()
    what = "a tiny RANDOM inpainting pipeline (tests/demo; not Stable Diffusion 2)" if tiny else "inpainting base"
    return f"{what} at {model}" + ("" if index.is_file() or not Path(model).exists() else " (no model_index.json)")


# ---- the synthesizer ----

class DefectFillSynthesizer(Generator):
    """A fine-tuned DefectFill pipeline that turns (clean image, mask, seed) into a defect image."""

    name = GENERATOR_NAME
    preserves_background = True
    class_conditional = False  # one learned [V*] token for the reference defects

    def __init__(self, cfg: GenerateConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.dilation = cfg.dilation
        self.meta = read_lora_metadata(cfg.lora_dir)
        self.model = cfg.model or self.meta["base_model"]
        self.prompt = cfg.prompt or self.meta["defect_prompt"]
        self.prompts_by_type = {} if cfg.prompt else dict(self.meta.get("defect_prompts_by_type") or {})
        self.resolution = cfg.resolution or int(self.meta["resolution"])
        self.crop_size = cfg.crop_size or int(self.meta["crop_size"])
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
        kwargs = {"torch_dtype": dtype} if dtype else {}
        self.pipe = load_inpaint_pipeline(self.model, lora_dir=cfg.lora_dir, **kwargs).to(device)
        if cfg.enable_xformers:
            self.pipe.enable_xformers_memory_efficient_attention()
        apply_speed_options(self.pipe.unet, self.pipe.vae, cfg.channels_last, cfg.compile_unet)
        self.pipe.set_progress_bar_config(disable=True)
        weights = Path(cfg.lora_dir) / "pytorch_lora_weights.safetensors"
        self.lora_hash = file_sha256(weights) + "+" + file_sha256(Path(cfg.lora_dir) / EMBEDS_NAME)
        self.lpips_model, self.lpips_desc = load_perceptual(cfg.selection, cfg.lpips_net, cfg.lpips_weights,
                                                            device=device)

    # ---- the registry interface: init_args → fit → checkpoint (the LoRA folder) → from_generate_config

    @classmethod
    def from_init_args(cls, init_args: dict | None = None) -> DefectFillSynthesizer:
        """Unfitted DefectFill: `config` (a DefectFillTrainConfig YAML, optional), `max_steps` (=
        max_train_steps) and any DefectFillTrainConfig key; `base_model_note` is a report label only."""
        args = dict(init_args or {})
        note = args.pop("base_model_note", "")
        config = args.pop("config", None)
        if "max_steps" in args:
            args["max_train_steps"] = args.pop("max_steps")
        unknown = sorted(set(args) - set(DefectFillTrainConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"defectfill: unknown init_args {', '.join(unknown)} (DefectFillTrainConfig keys, "
                              "config, max_steps or base_model_note)")
        if config is not None and not Path(config).is_file():
            raise ConfigError(f"{config}: defectfill init_args.config not found")
        self = cls.__new__(cls)
        self.train_config, self.train_overrides, self.base_model_note = config, args, note
        return self

    @classmethod
    def check_init_args(cls, init_args: dict | None = None) -> None:
        """The training config resolves and its base model (configs only, no weights) is an inpainting
        pipeline; a missing `.../tiny-sd2-inpainting` folder is made on first use (its parent must be writable)."""
        cfg = cls.from_init_args(init_args)._train_cfg()
        path = Path(cfg.model)
        if path.name == TINY_MODEL_NAME and not path.exists():
            check_writable(path.parent, f"folder of the tiny model {path.name} (made on first use)")
            return
        model = resolve_model(cfg.model)
        check_inpainting_unet(model)
        read_text_encoder_config(model)

    def _train_cfg(self, **values):
        return load_config(DefectFillTrainConfig, self.train_config, **{**self.train_overrides, **values})

    def fit(self, dataset, output_dir, seed: int = 0) -> Path:
        """Fine-tune the LoRA + token on `dataset` (DefectFill's `train`); returns the LoRA folder. An
        interrupted fit in `output_dir` (checkpoints, no final LoRA) resumes from its newest checkpoint,
        unless the config says `overwrite`."""
        cfg = self._train_cfg(data_dir=str(Path(dataset.root)), output_dir=str(output_dir), seed=int(seed))
        cfg.model = ensure_tiny_model(cfg.model)
        lora = train(cfg, resume_from_checkpoint=None if cfg.overwrite else "latest")
        if self.base_model_note:
            atomic_write_text(Path(lora) / "base_model_note.txt", self.base_model_note)
        return lora

    @classmethod
    def _lora_dir(cls, cfg: GenerateConfig) -> str:
        lora = cfg.lora_dir or cfg.checkpoint
        if not lora:
            raise ConfigError("defectfill needs lora_dir (or checkpoint): the LoRA folder a DefectFill training "
                              "run wrote")
        return str(lora)

    @classmethod
    def from_generate_config(cls, cfg: GenerateConfig, device="cpu") -> DefectFillSynthesizer:
        import dataclasses

        return cls(dataclasses.replace(cfg, lora_dir=cls._lora_dir(cfg)), device=device)

    @classmethod
    def checkpoint_defaults(cls, cfg: GenerateConfig) -> dict:
        """The LoRA folder's record (base model, training data, classes) for keys `cfg` leaves unset."""
        return read_lora_metadata(cls._lora_dir(cfg))

    @classmethod
    def check(cls, cfg: GenerateConfig) -> None:
        """The LoRA folder is complete and fits the base model (`--model`, else the one it was trained on)."""
        lora = cls._lora_dir(cfg)
        meta = read_lora_metadata(lora)
        check_lora_base(lora, resolve_model(cfg.model or meta["base_model"]), meta["base_model"])
        by_type = meta.get("tokens_by_type") or {}
        if by_type and not cfg.prompt and cfg.masks != "auto" and cfg.defect_type not in by_type:
            raise ConfigError(f"{lora}: this LoRA learned one token per defect type; with a masks folder name the "
                              f"type to paint with --defect-type ({', '.join(sorted(by_type))})")

    def metadata(self) -> dict:
        note_file = Path(self.cfg.lora_dir) / "base_model_note.txt"
        note = note_file.read_text().strip() if note_file.is_file() else describe_base_model(self.model)
        return {"generator": self.name, "base_model": self.model, "base_model_note": note,
                "lora_dir": str(self.cfg.lora_dir), "lora_hash": self.lora_hash, "prompt": self.prompt}

    def prompt_for(self, defect_class: str | None) -> str:
        """The prompt of one mask: its type's learned token for a LoRA with a token per type, else the one."""
        if not self.prompts_by_type:
            return self.prompt
        if defect_class not in self.prompts_by_type:
            raise ModelError(f"{self.cfg.lora_dir}: no learned token for defect type {defect_class!r} (this LoRA has "
                             f"one per type: {', '.join(sorted(self.prompts_by_type))})")
        return self.prompts_by_type[defect_class]

    def candidates(self, window: np.ndarray, window_mask: np.ndarray, seeds: list[int],
                   prompt: str | None = None) -> np.ndarray:
        """K inpainted candidates (K, R, R, 3) in [0, 1] from one batched pipeline call on a
        window already at the model resolution (uint8 RGB) and its mask."""
        r = self.resolution
        image = Image.fromarray(window)
        mask = latent_safe(window_mask, self.pipe.vae_scale_factor)
        out = self.pipe(
            prompt or self.prompt, image=image, mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
            height=r, width=r, num_images_per_prompt=len(seeds), num_inference_steps=self.cfg.num_inference_steps,
            guidance_scale=self.cfg.guidance_scale, negative_prompt=self.cfg.negative_prompt,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        )
        return out.images

    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int,
                   defect_class: str | None = None, placement=None) -> tuple[np.ndarray, dict]:
        """Generate K candidates in a window around `mask`, keep the least clean-like one inside
        the mask (Low-Fidelity Selection), and composite it into `clean`."""
        seeds = [derive_seed(seed, k) for k in range(self.cfg.candidates)]
        prompt = self.prompt_for(defect_class)
        info: dict = {"candidate_seeds": seeds, **({"prompt": prompt} if self.prompts_by_type else {})}

        def pick(window_r: np.ndarray, mask_r: np.ndarray) -> np.ndarray:
            cands = self.candidates(window_r, mask_r, seeds, prompt)
            chosen, scores = low_fidelity_selection(
                torch.from_numpy(cands).permute(0, 3, 1, 2).float(),
                torch.from_numpy(window_r.astype(np.float32) / 255).permute(2, 0, 1),
                torch.from_numpy(mask_r), measure=self.cfg.selection, lpips_model=self.lpips_model)
            info["selection"] = {"measure": self.cfg.selection, "scores": [float(s) for s in scores],
                                 "chosen": int(chosen), "lpips": self.lpips_desc}
            return (cands[chosen] * 255).round().astype(np.uint8)

        result, window = windowed(clean, mask, self.crop_size, self.resolution, self.cfg.dilation, pick)
        return result, {"window_yxhw": list(window), **info}


def latent_safe(mask: np.ndarray, latent_factor: int) -> np.ndarray:
    """Dilate by one latent cell so the pipeline's nearest-neighbour downsampling to the latent
    grid cannot drop a thin defect."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=max(1, latent_factor))


def model_mask(mask: np.ndarray, size: int, latent_factor: int) -> np.ndarray:
    """The mask given to the pipeline: resized to the model resolution, then `latent_safe`."""
    return latent_safe(resize_mask(mask, size), latent_factor)
