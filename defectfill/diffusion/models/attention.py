"""Capture of the [V*] cross-attention maps in the UNet decoder, with gradients.

Only the decoder (`up_blocks`) cross-attention layers (`attn2`) get the capturing processor;
every other layer keeps its processor (torch SDPA by default). SDPA and xformers never expose
attention probabilities, so the capturing processor computes them with
`attn.get_attention_scores`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AttentionStore:
    """Collects, per decoder cross-attention layer, the head-averaged map of one token per item.

    Set `token_index` (LongTensor (B,): the [V*] position in each captured item's prompt) and
    call `start()` before a UNet forward; items beyond `len(token_index)` in the batch are not
    captured. Maps are kept only between `start()` and `stop()`; the same selection still runs
    after `stop()`, so a gradient-checkpointing recompute during backward saves the same tensors
    as the forward did (torch checks this) without adding maps.
    """

    token_index: torch.Tensor | None = None
    maps: list[torch.Tensor] = field(default_factory=list)
    active: bool = False

    def start(self, token_index: torch.Tensor) -> None:
        self.token_index = token_index
        self.maps = []
        self.active = True

    def stop(self) -> None:
        self.active = False

    def record(self, probs: torch.Tensor, heads: int) -> None:
        """`probs`: (batch*heads, queries, keys) attention probabilities of one layer."""
        n = self.token_index.shape[0]
        probs = probs.unflatten(0, (-1, heads))[:n]  # (n, heads, queries, keys)
        picked = probs[torch.arange(n, device=probs.device), :, :, self.token_index.to(probs.device)]
        if self.active:
            self.maps.append(picked.mean(dim=1))  # (n, queries)

    def aggregate(self, height: int, width: int) -> torch.Tensor:
        """Mean over layers of the maps resized to the latent grid: (n, 1, height, width)."""
        if not self.maps:
            raise RuntimeError("no cross-attention maps were recorded; is the capture installed?")
        resized = []
        for m in self.maps:
            scale = math.sqrt(height * width / m.shape[1])
            h, w = round(height / scale), round(width / scale)
            grid = m.float().reshape(m.shape[0], 1, h, w)
            resized.append(F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False))
        return torch.stack(resized).mean(dim=0)


class CrossAttentionCaptureProcessor:
    """diffusers attention processor: plain attention that also records into an `AttentionStore`."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError("CrossAttentionCaptureProcessor supports transformer cross-attention layers only")
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch_size)

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if self.store.token_index is not None:
            self.store.record(probs, attn.heads)

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_attention_capture(unet, store: AttentionStore) -> list[str]:
    """Give the decoder cross-attention layers a capturing processor; return their names.

    Must be called after any `enable_xformers_memory_efficient_attention`, which would replace it.
    """
    processors = dict(unet.attn_processors)
    captured = [n for n in processors if n.startswith("up_blocks.") and ".attn2." in n]
    if not captured:
        raise ValueError("the UNet has no cross-attention layers in its up_blocks to capture")
    capture = CrossAttentionCaptureProcessor(store)
    unet.set_attn_processor({n: capture if n in captured else p for n, p in processors.items()})
    return captured
