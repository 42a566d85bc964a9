"""The architecture of a small SD-style inpainting base, and writing it as a diffusers pipeline."""

from __future__ import annotations

from pathlib import Path

import torch

from defectfill.diffusion.models.tiny import write_tiny_tokenizer


def base_components(vae_channels=(32, 64), unet_channels=(32, 64, 96), layers_per_block: int = 1,
                    attention_head_dim: int = 8, text_hidden: int = 64, text_layers: int = 2,
                    latent_channels: int = 4, prediction_type: str = "v_prediction", sample_size: int = 64,
                    vocab_size: int = 1000, seed: int = 0) -> dict:
    """Randomly initialised VAE (f = 2^(len(vae_channels)-1)), 9-channel UNet, CLIP text encoder and
    a DDIM scheduler with zero-terminal-SNR betas and trailing timesteps (Lin et al. 2024), so
    v-prediction sampling starts from pure noise, as the inpainting pipeline does at strength 1."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    factor = 2 ** (len(vae_channels) - 1)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=list(vae_channels),
                        down_block_types=["DownEncoderBlock2D"] * len(vae_channels),
                        up_block_types=["UpDecoderBlock2D"] * len(vae_channels), latent_channels=latent_channels,
                        layers_per_block=1, norm_num_groups=16, sample_size=sample_size)
    torch.manual_seed(seed)
    n = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size // factor, in_channels=2 * latent_channels + 1, out_channels=latent_channels,
        block_out_channels=tuple(unet_channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=text_hidden, attention_head_dim=attention_head_dim, norm_num_groups=32,
        use_linear_projection=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_attention_heads=4,
        num_hidden_layers=text_layers, vocab_size=vocab_size, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=text_hidden))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
                              rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def new_tokenizer(directory: Path):
    """The offline byte-level CLIP tokenizer of ``models.tiny`` (whole words for the prompts used)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(directory))


def sync_token_ids(text_encoder, tokenizer) -> None:
    text_encoder.config.bos_token_id = tokenizer.bos_token_id
    text_encoder.config.eos_token_id = tokenizer.eos_token_id
    text_encoder.config.pad_token_id = tokenizer.pad_token_id


def save_pipeline(directory: Path, unet, vae, text_encoder, tokenizer, scheduler) -> Path:
    """Write a ``StableDiffusionInpaintPipeline`` folder (safetensors) that ``from_pretrained`` loads."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
