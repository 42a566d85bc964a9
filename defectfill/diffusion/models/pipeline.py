"""Loading a Stable-Diffusion-2 inpainting model from a hub id or a local folder, with checks
that fail early and name the folder or file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from defectfill.diffusion.models.lora import load_defectfill_lora, lora_base_mismatch, lora_shapes
from defectfill.errors import ModelError

DEFAULT_BASE_MODEL = "sd2-community/stable-diffusion-2-inpainting"
# The small fabric inpainting base shipped inside the package (`defectfill pretrain-base`, trained on
# AITEX here; its model_card.md says how well it inpaints): the offline default of the CPU demo and
# benchmark. Named by this alias in configs and on the command line.
FABRIC_BASE = "fabric-base"
EMBEDDED_MODELS = {FABRIC_BASE: Path(__file__).resolve().parents[2] / "assets" / "fabric-base"}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Return a local folder (checked to hold a diffusers model) or a hub id, unchanged.

    An existing path is a local folder; a name that is not of the hub form `org/name` must be
    one, so a mistyped folder fails here instead of as a confusing hub lookup.
    """
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        if not (EMBEDDED_MODELS[name] / "model_index.json").is_file():
            raise ModelError(f"{EMBEDDED_MODELS[name]}: the embedded {name} model is missing from this install")
        return str(EMBEDDED_MODELS[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "unet").is_dir() or not (path / "model_index.json").is_file():
            raise ModelError(f"{path}: not a diffusers inpainting model folder (needs model_index.json and unet/)")
        return str(path)
    if _looks_like_path(name):
        raise ModelError(f"{name}: model folder does not exist (a tiny test model: defectfill make-tiny-model {name})")
    return name


def check_inpainting_unet(model: str) -> dict:
    """Load only the UNet config and insist on the 9 input channels of an inpainting UNet."""
    from diffusers import UNet2DConditionModel

    where = f"{model}/unet/config.json"
    try:
        config = UNet2DConditionModel.load_config(model, subfolder="unet")
    except Exception as exc:  # hub errors, offline mode, missing file: one clear line
        raise ModelError(f"{where}: cannot read the UNet config ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    if config.get("in_channels") != 9:
        raise ModelError(
            f"{where}: in_channels is {config.get('in_channels')}, an inpainting UNet needs 9 "
            "(4 latent + 1 mask + 4 masked-image latent); use an *-inpainting* model"
        )
    return config


def read_text_encoder_config(model: str) -> dict:
    """The text encoder's config.json (no weights); ModelError naming it when unreadable."""
    from transformers import PretrainedConfig

    where = f"{model}/text_encoder/config.json"
    try:
        config, _ = PretrainedConfig.get_config_dict(model, subfolder="text_encoder")
    except Exception as exc:
        raise ModelError(f"{where}: cannot read the text encoder config ({type(exc).__name__}: {exc})"
                         .splitlines()[0]) from exc
    return config


@dataclass
class TrainingComponents:
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object


def check_lora_base(directory: str | os.PathLike, model: str, recorded_base: str | None = None) -> None:
    """ModelError (one line) when the LoRA in ``directory`` was made for another architecture than
    ``model`` (configs and safetensors headers only; no weights load)."""
    unet_config = check_inpainting_unet(model)
    text_hidden = read_text_encoder_config(model).get("hidden_size")
    why = lora_base_mismatch(lora_shapes(directory), unet_config, text_hidden)
    if why:
        raise ModelError(f"{directory}: this LoRA does not fit base model {model} ({why}); it was trained on "
                         f"{recorded_base or 'another base'}: pass that model with --model")


def load_training_components(model: str, revision: str | None = None, variant: str | None = None,
                             torch_dtype=None) -> TrainingComponents:
    """Load tokenizer, text encoder, VAE, UNet (in `torch_dtype`) and a DDPM noise scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = resolve_model(model)
    check_inpainting_unet(model)
    kw = {"revision": revision}
    weights = {"variant": variant, "torch_dtype": torch_dtype, **kw}
    return TrainingComponents(
        tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
        text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **weights),
        vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **weights),
        unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **weights),
        noise_scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
    )


def load_inpaint_pipeline(model: str, lora_dir: str | os.PathLike | None = None, **kwargs):
    """A `StableDiffusionInpaintPipeline` of `model`, with a DefectFill LoRA applied if given."""
    from diffusers import StableDiffusionInpaintPipeline

    model = resolve_model(model)
    check_inpainting_unet(model)
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(model, **kwargs)
    if lora_dir is not None:
        load_defectfill_lora(pipe, lora_dir)
    return pipe


def apply_speed_options(unet, vae, channels_last: bool = False, compile_unet: bool = False) -> None:
    """Training's and generation's speed options, in place: the UNet and VAE in the channels_last memory
    format; `torch.compile` of the UNet (``Module.compile``: parameter names, LoRA saving and Accelerate
    wrapping are unchanged; the first calls pay the compile)."""
    import torch

    if channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if compile_unet:
        unet.compile()
