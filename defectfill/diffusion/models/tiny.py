"""A tiny random SD-2-style inpainting pipeline, written in diffusers format.

Follows diffusers' `get_dummy_components` pattern (seeded tiny UNet, VAE and CLIP text encoder)
so tests and the CPU demo load it with `from_pretrained(dir)` exactly like the real model.
The tokenizer is a byte-level CLIP BPE built from a vocab written here: no network access.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A few whole-word merges so the prompts used in training are short token sequences.
_WORDS = ("a", "photo", "of", "with", "fabric", "defect", "the", "an")


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tiny_tokenizer(directory: str | Path) -> Path:
    """Write `vocab.json`, `merges.txt` and `tokenizer_config.json` of a tiny CLIP tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = _byte_level_chars()
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    merges: list[str] = []
    for word in _WORDS:
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_components(sample_size: int = 32, vocab_size: int = 1000) -> dict:
    """The components of a tiny SD-2 inpainting pipeline, seeded like diffusers' dummy components.

    `sample_size` is the latent size the UNet config declares; the VAE downsamples by 2 (two
    blocks), so any pixel size divisible by 4 works.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=sample_size * 2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=1,
            vocab_size=vocab_size,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def make_tiny_pipeline(directory: str | Path) -> Path:
    """Write a tiny random StableDiffusionInpaintPipeline to `directory` (safetensors) and return it."""
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTokenizer

    directory = Path(directory)
    tokenizer_dir = write_tiny_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    parts = tiny_components(vocab_size=len(tokenizer))
    # Real CLIP: bos/eos are the last two vocab entries; keep the text config in step.
    parts["text_encoder"].config.bos_token_id = tokenizer.bos_token_id
    parts["text_encoder"].config.eos_token_id = tokenizer.eos_token_id
    parts["text_encoder"].config.pad_token_id = tokenizer.pad_token_id
    pipe = StableDiffusionInpaintPipeline(
        **parts,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


TINY_MODEL_NAME = "tiny-sd2-inpainting"


def ensure_tiny_model(model: str) -> str:
    """`model` as given, or resolved to an absolute folder when it exists; a missing
    ``.../tiny-sd2-inpainting`` folder is made with `make_tiny_pipeline` first (tests, CPU profiles).
    Safe when several processes race: one rename wins, the others use its folder."""
    import os
    import shutil

    path = Path(model)
    if path.name == TINY_MODEL_NAME and not (path / "model_index.json").exists():
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        make_tiny_pipeline(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path.resolve()) if path.exists() else model
