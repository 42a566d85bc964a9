"""Tests for defectfill.diffusion.models.attention: AttentionStore bookkeeping and the capturing processor."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from defectfill.diffusion.models.attention import (
    AttentionStore,
    CrossAttentionCaptureProcessor,
    install_attention_capture,
)

# ================================================================ AttentionStore on constructed probs


def _constructed_probs():
    """probs of shape (batch*heads, queries, keys) = (3*2, 4, 3), batch-major like head_to_batch_dim.

    item 0, token 2: head 0 = [0.1, 0.2, 0.3, 0.4], head 1 = [0.5, 0.6, 0.7, 0.8]
    item 1, token 0: head 0 = [1, 0, 0, 0],         head 1 = [0, 0, 0, 1]
    every other (item, token) holds 9, and item 2 holds 7 everywhere.
    """
    batch, heads, queries, keys = 3, 2, 4, 3
    p = torch.full((batch, heads, queries, keys), 9.0)
    p[0, 0, :, 2] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    p[0, 1, :, 2] = torch.tensor([0.5, 0.6, 0.7, 0.8])
    p[1, 0, :, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    p[1, 1, :, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    p[2] = 7.0
    return p.reshape(batch * heads, queries, keys)


def test_record_head_mean_and_per_item_token():
    store = AttentionStore()
    store.start(torch.tensor([2, 0]))  # 2 items captured; item 2 of the batch is ignored
    store.record(_constructed_probs(), heads=2)
    assert len(store.maps) == 1
    m = store.maps[0]
    assert m.shape == (2, 4)
    # item 0: mean of heads = [(0.1+0.5)/2, (0.2+0.6)/2, (0.3+0.7)/2, (0.4+0.8)/2] = [0.3, 0.4, 0.5, 0.6]
    # item 1: [(1+0)/2, 0, 0, (0+1)/2] = [0.5, 0, 0, 0.5]
    assert torch.allclose(m, torch.tensor([[0.3, 0.4, 0.5, 0.6], [0.5, 0.0, 0.0, 0.5]]), atol=1e-6)


def test_record_then_aggregate_same_resolution_is_identity_reshape():
    store = AttentionStore()
    store.start(torch.tensor([2, 0]))
    store.record(_constructed_probs(), heads=2)
    out = store.aggregate(2, 2)
    assert out.shape == (2, 1, 2, 2)
    # queries are row-major on the 2x2 grid
    expected = torch.tensor([[[[0.3, 0.4], [0.5, 0.6]]], [[[0.5, 0.0], [0.0, 0.5]]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_start_resets_and_stop_deactivates():
    store = AttentionStore()
    assert not store.active
    store.start(torch.tensor([0]))
    store.maps.append(torch.zeros(1, 4))
    store.start(torch.tensor([1]))
    assert store.maps == [] and store.active
    assert store.token_index.tolist() == [1]
    store.stop()
    assert not store.active


def test_aggregate_resizes_layers_of_different_resolution_and_averages():
    store = AttentionStore()
    # layer A: 4 queries (2x2 grid) of 0.2; layer B: 16 queries (4x4 grid) of 0.6
    store.maps = [torch.full((1, 4), 0.2), torch.full((1, 16), 0.6)]
    out = store.aggregate(4, 4)
    # constant maps stay constant under bilinear resizing: mean = (0.2 + 0.6) / 2 = 0.4
    assert out.shape == (1, 1, 4, 4)
    assert torch.allclose(out, torch.full((1, 1, 4, 4), 0.4), atol=1e-6)
    out8 = store.aggregate(8, 8)
    assert out8.shape == (1, 1, 8, 8)
    assert torch.allclose(out8, torch.full((1, 1, 8, 8), 0.4), atol=1e-6)


def test_aggregate_bilinear_upsampling_orientation():
    store = AttentionStore()
    # 2x2 grid [[0, 1], [0, 1]] (row-major queries 0, 1, 0, 1): varies along the width only
    store.maps = [torch.tensor([[0.0, 1.0, 0.0, 1.0]])]
    out = store.aggregate(4, 4)
    # bilinear, align_corners=False, 2 -> 4: output x maps to input (x + 0.5) / 2 - 0.5
    # = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) -> [0, 0.25, 0.75, 1]
    row = [0.0, 0.25, 0.75, 1.0]
    assert torch.allclose(out, torch.tensor([[[row, row, row, row]]]), atol=1e-6)


def test_aggregate_non_square_latent():
    store = AttentionStore()
    # 8 queries on a 2x4 latent: row-major [[0, 1, 2, 3], [4, 5, 6, 7]]; second layer 1x2 constant 1.0
    store.maps = [torch.arange(8.0).reshape(1, 8), torch.ones(1, 2)]
    out = store.aggregate(2, 4)
    # mean of the two layers: (v + 1) / 2
    expected = torch.tensor([[[[0.5, 1.0, 1.5, 2.0], [2.5, 3.0, 3.5, 4.0]]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_aggregate_without_maps_raises():
    with pytest.raises(RuntimeError, match="no cross-attention maps"):
        AttentionStore().aggregate(4, 4)


# ================================================================ the capturing processor on the tiny UNet


@pytest.fixture(scope="module")
def tiny_unet():
    from defectfill.diffusion.models.tiny import tiny_components

    unet = tiny_components()["unet"]
    unet.eval()
    return unet


@pytest.fixture()
def unet(tiny_unet):
    u = copy.deepcopy(tiny_unet)
    u.requires_grad_(False)
    return u


def _inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 9, 8, 8, generator=g)
    timestep = torch.tensor([10, 500][:batch])
    ehs = torch.randn(batch, 77, 32, generator=g)
    return sample, timestep, ehs


def _up_attn2(unet):
    return {n: m for n, m in unet.named_modules() if n.startswith("up_blocks.") and n.endswith(".attn2")}


def test_capture_matches_default_sdpa_and_replaces_only_decoder_attn2(unet):
    before = {n: type(p) for n, p in unet.attn_processors.items()}
    assert all(cls is AttnProcessor2_0 for cls in before.values())
    sample, timestep, ehs = _inputs()
    with torch.no_grad():
        ref = unet(sample, timestep, ehs).sample

    store = AttentionStore()
    names = install_attention_capture(unet, store)
    expected_names = {f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)}
    assert set(names) == expected_names

    after = unet.attn_processors
    for name, proc in after.items():
        if name in expected_names:
            assert isinstance(proc, CrossAttentionCaptureProcessor)
            assert proc.store is store
        else:
            assert type(proc) is before[name], name
    # attn1 of the up blocks, and attn2 of down/mid blocks are untouched
    assert type(after["up_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]) is AttnProcessor2_0
    assert type(after["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]) is AttnProcessor2_0
    assert type(after["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]) is AttnProcessor2_0

    with torch.no_grad():
        out_inactive = unet(sample, timestep, ehs).sample
        store.start(torch.tensor([3, 5]))
        out_active = unet(sample, timestep, ehs).sample
        store.stop()
    assert (out_inactive - ref).abs().max().item() < 1e-5
    assert (out_active - ref).abs().max().item() < 1e-5


def test_up_attn2_actually_affects_output(unet):
    # Guard for the equivalence test above: the decoder cross-attention is not a no-op on the output.
    sample, timestep, ehs = _inputs()
    with torch.no_grad():
        ref = unet(sample, timestep, ehs).sample
        for m in _up_attn2(unet).values():
            m.to_k.weight.mul_(3.0)
        changed = unet(sample, timestep, ehs).sample
    assert (changed - ref).abs().max().item() > 1e-4


def test_recorded_maps_match_hand_computed_softmax(unet):
    store = AttentionStore()
    install_attention_capture(unet, store)
    sample, timestep, ehs = _inputs()
    inputs = {}

    def hook(name):
        def pre(module, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            inputs[name] = (hs.detach().clone(), kwargs["encoder_hidden_states"].detach().clone())

        return pre

    modules = _up_attn2(unet)
    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    token_index = torch.tensor([4])  # capture item 0 only; item 1 is beyond len(token_index)
    with torch.no_grad():
        store.start(token_index)
        unet(sample, timestep, ehs)
        store.stop()
    for h in handles:
        h.remove()

    assert len(store.maps) == len(modules) == 3
    for name, recorded in zip(sorted(modules), store.maps):
        attn = modules[name]
        hs, ctx = inputs[name]
        heads = attn.heads
        b, q_len, _ = hs.shape
        q = attn.to_q(hs).view(b, q_len, heads, -1).transpose(1, 2)  # (b, heads, Q, d)
        k = attn.to_k(ctx).view(b, ctx.shape[1], heads, -1).transpose(1, 2)  # (b, heads, 77, d)
        d = q.shape[-1]
        probs = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)  # (b, heads, Q, 77)
        expected = probs[0, :, :, 4].mean(dim=0, keepdim=True)  # (1, Q)
        assert recorded.shape == (1, 16)  # 8x8 input -> 4x4 grid in up_blocks.0
        assert torch.allclose(recorded, expected, atol=1e-6)
        # one token's probability per query: inside [0, 1], and strictly less than the total 1
        assert recorded.min().item() >= 0.0 and recorded.max().item() <= 1.0
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert store.aggregate(8, 8).shape == (1, 1, 8, 8)


def test_inactive_store_records_nothing(unet):
    store = AttentionStore()
    install_attention_capture(unet, store)
    sample, timestep, ehs = _inputs()
    with torch.no_grad():
        unet(sample, timestep, ehs)
    assert store.maps == []
    store.start(torch.tensor([1, 1]))
    store.stop()
    with torch.no_grad():
        unet(sample, timestep, ehs)
    assert store.maps == []


def test_aggregate_is_differentiable_wrt_decoder_to_k(unet):
    store = AttentionStore()
    install_attention_capture(unet, store)
    to_k = [m.to_k.weight for m in _up_attn2(unet).values()]
    for w in to_k:
        w.requires_grad_(True)
    sample, timestep, ehs = _inputs()
    store.start(torch.tensor([4, 7]))
    unet(sample, timestep, ehs)
    store.stop()
    assert len(store.maps) == 3
    amap = store.aggregate(8, 8)
    assert amap.shape == (2, 1, 8, 8) and amap.requires_grad
    # through the attention loss, as in training
    from defectfill.diffusion.losses import attention_loss

    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1.0
    (amap.sum() + attention_loss(amap, mask)).backward()
    for w in to_k:
        assert w.grad is not None
        assert w.grad.abs().sum().item() > 0


# ================================================================ with LoRA


def test_capture_with_lora_records_and_trains_lora(unet):
    from defectfill.diffusion.models.lora import add_lora

    sample, timestep, ehs = _inputs()
    with torch.no_grad():
        ref = unet(sample, timestep, ehs).sample

    store = AttentionStore()
    install_attention_capture(unet, store)
    add_lora(unet, None, rank=4, train_text_encoder=False, init=False)
    procs = unet.attn_processors
    assert isinstance(procs["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"], CrossAttentionCaptureProcessor)

    unet.requires_grad_(False)
    lora_params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    assert lora_params
    for p in lora_params.values():
        p.requires_grad_(True)

    store.start(torch.tensor([4, 7]))
    out = unet(sample, timestep, ehs).sample
    store.stop()
    # LoRA initialised randomly (init=False) visibly changes the prediction
    assert (out.detach() - ref).abs().max().item() > 1e-4
    assert len(store.maps) == 3

    store.aggregate(8, 8).sum().backward()
    up_k = [n for n in lora_params if n.startswith("up_blocks.") and ".attn2.to_k.lora_" in n]
    up_q = [n for n in lora_params if n.startswith("up_blocks.") and ".attn2.to_q.lora_" in n]
    assert len(up_k) == 6 and len(up_q) == 6  # lora_A and lora_B of 3 layers each
    for n in up_k + up_q:
        g = lora_params[n].grad
        assert g is not None and g.abs().sum().item() > 0, n
