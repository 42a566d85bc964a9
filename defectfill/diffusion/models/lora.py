"""The learnable [V*] token, LoRA adapters (peft) and their save/load in diffusers' format.

Saved layout of a DefectFill LoRA folder:
    pytorch_lora_weights.safetensors   UNet + text-encoder LoRA (diffusers `save_lora_weights`)
    learned_embeds.safetensors         {token: embedding} (diffusers `load_textual_inversion`)
    defectfill_lora.json               token, prompts, base model: what generation needs
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from defectfill.errors import ModelError

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
EMBEDS_NAME = "learned_embeds.safetensors"
META_NAME = "defectfill_lora.json"


def add_placeholder_token(tokenizer, text_encoder, token: str, initializer: str = "defect") -> int:
    """Add `token` to the tokenizer, grow the embedding table, and initialise the new row as the
    mean embedding of `initializer`'s tokens. Returns the new token id."""
    if tokenizer.add_tokens(token) != 1:
        raise ModelError(f"placeholder token {token!r} is already in the tokenizer; choose another")
    token_id = tokenizer.convert_tokens_to_ids(token)
    init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[token_id] = table[init_ids].mean(dim=0)
    return token_id


class PlaceholderEmbedding(torch.nn.Module):
    """Token embedding whose rows for the placeholder token id(s) come from trainable vectors.

    ``vector`` is one row (D,) for one token, one row per token (N, D) for several (a token per
    defect type). The table stays frozen, so optimiser state and checkpoints hold those rows only.
    """

    def __init__(self, base: torch.nn.Embedding, token_ids: int | list[int]):
        super().__init__()
        self.base = base
        self.token_ids = [token_ids] if isinstance(token_ids, int) else [int(t) for t in token_ids]
        self.token_id = self.token_ids[0]
        rows = base.weight[self.token_ids].detach().clone().float()
        self.vector = torch.nn.Parameter(rows[0] if len(self.token_ids) == 1 else rows)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def row(self, token_id: int) -> torch.Tensor:
        """The trainable embedding of ``token_id``."""
        return self.vector if self.vector.dim() == 1 else self.vector[self.token_ids.index(token_id)]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        rows = self.vector.reshape(len(self.token_ids), -1).to(embeds.dtype)
        for i, token_id in enumerate(self.token_ids):
            embeds = torch.where((input_ids == token_id).unsqueeze(-1), rows[i], embeds)
        return embeds


def attach_placeholder_embedding(text_encoder, token_ids: int | list[int]) -> PlaceholderEmbedding:
    """Swap the text encoder's token embedding for a `PlaceholderEmbedding` and return it."""
    embedding = PlaceholderEmbedding(text_encoder.get_input_embeddings(), token_ids)
    text_encoder.set_input_embeddings(embedding)
    return embedding


def placeholder_vector(text_encoder, token_id: int) -> torch.Tensor:
    """The current embedding of a placeholder token, whether or not a `PlaceholderEmbedding` is attached."""
    embedding = text_encoder.get_input_embeddings()
    if isinstance(embedding, PlaceholderEmbedding):
        return embedding.row(token_id)
    return embedding.weight[token_id]


def add_lora(unet, text_encoder, rank: int = 8, alpha: float | None = None, train_text_encoder: bool = True,
             init: str | bool = "gaussian") -> None:
    """Attach LoRA adapters to the UNet attention (`to_q,to_k,to_v,to_out.0`) and, optionally,
    the text-encoder attention (`q_proj,k_proj,v_proj,out_proj`)."""
    from peft import LoraConfig, inject_adapter_in_model

    alpha = rank if alpha is None else alpha
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=list(UNET_LORA_TARGETS)))
    if train_text_encoder:
        # peft directly: transformers' `add_adapter` may demand a newer peft than the registry has.
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=list(TEXT_LORA_TARGETS))
        inject_adapter_in_model(config, text_encoder)


def lora_state_dicts(unet, text_encoder) -> tuple[dict, dict]:
    """LoRA weights of both models in diffusers' naming (empty dict if a model has none)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def grab(model):
        if not any("lora_" in name for name, _ in model.named_parameters()):
            return {}
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    return grab(unet), grab(text_encoder)


def save_defectfill_lora(directory: str | os.PathLike, unet, text_encoder, token: str | list[str],
                         token_id: int | list[int], metadata: dict) -> Path:
    """Write a DefectFill LoRA folder (see module docstring) loadable by `load_defectfill_lora`; with
    several tokens (a list each, in the same order) every one is saved, the first named ``token``."""
    from diffusers import StableDiffusionInpaintPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet_layers, text_layers = lora_state_dicts(unet, text_encoder)
    StableDiffusionInpaintPipeline.save_lora_weights(
        directory,
        unet_lora_layers={k: v.detach().float().contiguous() for k, v in unet_layers.items()},
        text_encoder_lora_layers={k: v.detach().float().contiguous() for k, v in text_layers.items()} or None,
        safe_serialization=True,
    )
    tokens = [token] if isinstance(token, str) else list(token)
    ids = [token_id] if isinstance(token_id, int) else list(token_id)
    rows = {t: placeholder_vector(text_encoder, i).detach().float().cpu().clone() for t, i in zip(tokens, ids)}
    save_file(rows, str(directory / EMBEDS_NAME))  # WEIGHTS_NAME is diffusers' default name
    (directory / META_NAME).write_text(json.dumps({"token": tokens[0], **metadata}, indent=2, default=str))
    return directory


WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
_META_KEYS = {"token": str, "base_model": str, "defect_prompt": str, "resolution": int, "crop_size": int}


def read_lora_metadata(directory: str | os.PathLike) -> dict:
    """The folder's `defectfill_lora.json`, checked: valid JSON with the keys generation needs, and
    both weight files present with readable safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: LoRA folder {'is not a directory' if directory.exists() else 'not found'}")
    path = directory / META_NAME
    if not path.is_file():
        raise ModelError(f"{path}: missing; {directory} is not a DefectFill LoRA folder (use the lora/ folder "
                         "a finished training run wrote)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not valid JSON ({' '.join(str(exc).split())}); retrain or restore the file") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: expected a JSON object")
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ModelError(f"{path}: lacks a valid {key!r} ({kind.__name__})")
    for name in (WEIGHTS_NAME, EMBEDS_NAME):
        weights = directory / name
        if not weights.is_file():
            raise ModelError(f"{weights}: missing; the LoRA folder is incomplete (use the lora/ folder a "
                             "finished training run wrote)")
        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as exc:  # SafetensorError and friends: truncated or not a safetensors file
            raise ModelError(f"{weights}: not a readable safetensors file ({' '.join(str(exc).split())})") from exc
    return meta


def lora_shapes(directory: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a LoRA folder's weight files, from the safetensors headers only."""
    from safetensors import safe_open

    shapes = {}
    for name in (WEIGHTS_NAME, EMBEDS_NAME):
        with safe_open(str(Path(directory) / name), framework="pt") as f:
            shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def lora_base_mismatch(shapes: dict[str, tuple[int, ...]], unet_config: dict, text_hidden: int | None) -> str | None:
    """Why LoRA tensors (``lora_shapes``) cannot apply to a base with these UNet / text-encoder
    configs, or None. Checks the input width of every LoRA down-projection: cross-attention keys and
    values read the text width, the other UNet projections their block's width (the first attention
    layer of ``down_blocks.i`` / ``up_blocks.i`` / ``mid_block``), text-encoder projections and the
    learned token embedding the text encoder's hidden size."""
    blocks = list(unet_config.get("block_out_channels") or [])
    cross = unet_config.get("cross_attention_dim")
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    for key, shape in sorted(shapes.items()):
        if len(shape) == 1 and "lora" not in key:  # the learned token
            if text_hidden is not None and shape[0] != text_hidden:
                return f"learned token has width {shape[0]}, the base text encoder {text_hidden}"
            continue
        if "lora_A" not in key and "lora.down" not in key or len(shape) != 2:
            continue
        width = shape[1]
        if key.startswith("text_encoder."):
            expected = text_hidden
        elif ".attn2.to_k." in key or ".attn2.to_v." in key:
            expected = cross
        elif "attn" in key and (".to_q." in key or ".to_k." in key or ".to_v." in key) and blocks:
            parts = key.split(".")
            if "down_blocks" in parts:
                expected = blocks[int(parts[parts.index("down_blocks") + 1])]
            elif "up_blocks" in parts:
                expected = blocks[::-1][int(parts[parts.index("up_blocks") + 1])]
            elif "mid_block" in parts:
                expected = blocks[-1]
            else:
                continue
        else:
            continue
        if expected is not None and width != expected:
            return f"{key} expects width {width}, the base has {expected}"
    return None


def lora_tokens(meta: dict) -> list[str]:
    """The learned tokens of a LoRA folder's metadata: one per defect type (``tokens_by_type``) or the one."""
    return list(dict.fromkeys((meta.get("tokens_by_type") or {}).values())) or [meta["token"]]


def load_defectfill_lora(pipe, directory: str | os.PathLike) -> dict:
    """Add the learned token(s) and load the LoRA weights into a diffusers inpainting pipeline."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_lora_metadata(directory)
    tokens = lora_tokens(meta)
    if len(tokens) == 1:
        pipe.load_textual_inversion(str(directory / EMBEDS_NAME), token=tokens[0])
    else:
        rows = load_file(str(directory / EMBEDS_NAME))
        missing = [t for t in tokens if t not in rows]
        if missing:
            raise ModelError(f"{directory / EMBEDS_NAME}: no embedding for token(s) {', '.join(missing)} named "
                             f"in {META_NAME}; the LoRA folder is incomplete")
        pipe.load_textual_inversion([{t: rows[t]} for t in tokens], token=tokens)
    pipe.load_lora_weights(str(directory))
    return meta
