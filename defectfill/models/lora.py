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
    """Token embedding whose rows for `token_id` come from one trainable vector.

    The table stays frozen, so optimiser state and checkpoints hold one row, not the table.
    """

    def __init__(self, base: torch.nn.Embedding, token_id: int):
        super().__init__()
        self.base = base
        self.token_id = token_id
        self.vector = torch.nn.Parameter(base.weight[token_id].detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.base(input_ids)
        hit = (input_ids == self.token_id).unsqueeze(-1)
        return torch.where(hit, self.vector.to(embeds.dtype), embeds)


def attach_placeholder_embedding(text_encoder, token_id: int) -> PlaceholderEmbedding:
    """Swap the text encoder's token embedding for a `PlaceholderEmbedding` and return it."""
    embedding = PlaceholderEmbedding(text_encoder.get_input_embeddings(), token_id)
    text_encoder.set_input_embeddings(embedding)
    return embedding


def placeholder_vector(text_encoder, token_id: int) -> torch.Tensor:
    """The current [V*] embedding, whether or not a `PlaceholderEmbedding` is attached."""
    embedding = text_encoder.get_input_embeddings()
    if isinstance(embedding, PlaceholderEmbedding):
        return embedding.vector
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


def save_defectfill_lora(directory: str | os.PathLike, unet, text_encoder, token: str, token_id: int,
                         metadata: dict) -> Path:
    """Write a DefectFill LoRA folder (see module docstring) loadable by `load_defectfill_lora`."""
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
    row = placeholder_vector(text_encoder, token_id).detach().float().cpu().clone()
    save_file({token: row}, str(directory / EMBEDS_NAME))
    (directory / META_NAME).write_text(json.dumps({"token": token, **metadata}, indent=2, default=str))
    return directory


def read_lora_metadata(directory: str | os.PathLike) -> dict:
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise ModelError(f"{path}: missing; {directory} is not a DefectFill LoRA folder")
    return json.loads(path.read_text())


def load_defectfill_lora(pipe, directory: str | os.PathLike) -> dict:
    """Add the learned token and load the LoRA weights into a diffusers inpainting pipeline."""
    directory = Path(directory)
    meta = read_lora_metadata(directory)
    pipe.load_textual_inversion(str(directory / EMBEDS_NAME), token=meta["token"])
    pipe.load_lora_weights(str(directory))
    return meta
