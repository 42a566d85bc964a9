"""Training speed features (cached reference latents, channels_last, fused prompt encoding) change
the cost of a step, never its result."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defectfill.config import load_config
from defectfill.diffusion.config import DefectFillTrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "defectfill" / "tiny.yaml"


@pytest.fixture(scope="module")
def small_refs(tmp_path_factory) -> Path:
    """References that fit in one 96 px crop (96 wide, 64 high), so a crop is fixed by (sample, flips)."""
    from defectfill.data import make_woven_dataset

    return make_woven_dataset(tmp_path_factory.mktemp("small") / "data", n_defect=3, n_good=1, height=64, width=96,
                              seed=1)


def lora_tensors(lora_dir: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    out.update(load_file(str(lora_dir / "learned_embeds.safetensors")))
    return out


def test_crop_keys_identify_crops_only_when_every_image_fits(small_refs, woven_root):
    from defectfill.data.datasets import DefectCropSampler, load_reference_dataset

    sampler = DefectCropSampler(load_reference_dataset(small_refs), 96, 64, seed=0)
    assert sampler.whole_image_crops
    seen: dict = {}
    for step in range(40):
        b = sampler.batch(step, 0, 3)
        assert len(b["keys"]) == 3
        for key, pixels, mask in zip(b["keys"], b["pixel_values"], b["masks"]):
            if key in seen:  # the same key is the same crop, to the bit
                assert torch.equal(seen[key][0], pixels) and torch.equal(seen[key][1], mask)
            seen[key] = (pixels, mask)
    assert 4 < len(seen) <= 4 * 3  # flips vary; at most 4 crops per sample
    big = DefectCropSampler(load_reference_dataset(woven_root), 128, 64, seed=0)
    assert not big.whole_image_crops and big.batch(0, 0, 2)["keys"] is None


def test_cached_latents_give_the_uncached_losses(tiny_model_dir, small_refs):
    from defectfill.data.datasets import DefectCropSampler, load_reference_dataset
    from defectfill.diffusion.trainer import (
        ReferenceLatentCache,
        compute_losses,
        make_batch,
        prepare_models,
        tokenize_prompts,
    )

    cfg = load_config(DefectFillTrainConfig, TINY_YAML, model=str(tiny_model_dir), data_dir=str(small_refs),
                      crop_size=96)
    s = prepare_models(cfg, str(tiny_model_dir), torch.device("cpu"), torch.float32)
    ids, token_index = tokenize_prompts(s.tokenizer, cfg, s.token_id)
    sampler = DefectCropSampler(load_reference_dataset(small_refs), cfg.crop_size, cfg.resolution, cfg.seed)
    cache = ReferenceLatentCache()
    with torch.no_grad():
        for step in range(6):
            plain = compute_losses(s.unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, ids, token_index,
                                   make_batch(sampler, cfg, step, 0), cfg, torch.float32)
            cached = compute_losses(s.unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, ids, token_index,
                                    make_batch(sampler, cfg, step, 0), cfg, torch.float32, cache)
            for k in plain:
                torch.testing.assert_close(cached[k], plain[k], rtol=1e-5, atol=1e-6)
    assert cache.hits > 0 and cache.misses == len(cache.entries) <= 4 * 3
    assert cache.hits + cache.misses == 6 * cfg.train_batch_size


def test_per_sample_prompt_rows_give_the_fused_losses(tiny_model_dir, small_refs):
    """Encoding the two prompts once and repeating rows = encoding one row per UNet sample."""
    from defectfill.data.datasets import DefectCropSampler, load_reference_dataset
    from defectfill.diffusion.trainer import compute_losses, make_batch, prepare_models, tokenize_prompts

    cfg = load_config(DefectFillTrainConfig, TINY_YAML, model=str(tiny_model_dir), data_dir=str(small_refs),
                      crop_size=96, train_batch_size=3)
    s = prepare_models(cfg, str(tiny_model_dir), torch.device("cpu"), torch.float32)
    ids, token_index = tokenize_prompts(s.tokenizer, cfg, s.token_id)
    per_sample = ids[[0, 0, 0, 1, 1, 1]]
    sampler = DefectCropSampler(load_reference_dataset(small_refs), cfg.crop_size, cfg.resolution, cfg.seed)
    with torch.no_grad():
        out = [compute_losses(s.unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, p, token_index,
                              make_batch(sampler, cfg, 0, 0), cfg, torch.float32) for p in (ids, per_sample)]
    for k in out[0]:
        torch.testing.assert_close(out[1][k], out[0][k], rtol=1e-5, atol=1e-6)


def test_training_with_cache_and_channels_last_matches_plain_training(tiny_model_dir, small_refs, tmp_path):
    from defectfill.diffusion.trainer import train

    common = {"model": str(tiny_model_dir), "data_dir": str(small_refs), "crop_size": 96, "max_train_steps": 3,
              "checkpointing_steps": 100}
    plain = train(load_config(DefectFillTrainConfig, TINY_YAML, output_dir=str(tmp_path / "plain"),
                              cache_reference_latents=False, **common))
    fast = train(load_config(DefectFillTrainConfig, TINY_YAML, output_dir=str(tmp_path / "fast"),
                             channels_last=True, **common))
    info = json.loads((tmp_path / "fast" / "run_info.json").read_text())
    assert info["latent_cache"]["hits"] > 0 and info["latent_cache"]["crops"] <= 4 * 3
    assert json.loads((tmp_path / "plain" / "run_info.json").read_text())["latent_cache"] is None
    a, b = lora_tensors(plain), lora_tensors(fast)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_compiled_unet_gives_the_eager_losses_and_gradients(tiny_model_dir, small_refs):
    """torch.compile of the UNet (with the [V*] attention capture inside it) changes nothing a step computes."""
    from defectfill.data.datasets import DefectCropSampler, load_reference_dataset
    from defectfill.diffusion.trainer import compute_losses, make_batch, prepare_models, tokenize_prompts

    cfg = load_config(DefectFillTrainConfig, TINY_YAML, model=str(tiny_model_dir), data_dir=str(small_refs),
                      crop_size=96, train_batch_size=1)
    s = prepare_models(cfg, str(tiny_model_dir), torch.device("cpu"), torch.float32)
    ids, token_index = tokenize_prompts(s.tokenizer, cfg, s.token_id)
    sampler = DefectCropSampler(load_reference_dataset(small_refs), cfg.crop_size, cfg.resolution, cfg.seed)
    lora = {n: p for n, p in s.unet.named_parameters() if p.requires_grad}
    results = []
    for unet in (s.unet, torch.compile(s.unet)):
        out = compute_losses(unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, ids, token_index,
                             make_batch(sampler, cfg, 0, 0), cfg, torch.float32)
        out["loss"].backward()
        results.append(({k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in lora.items()}))
        for p in lora.values():
            p.grad = None
    (eager, eager_grads), (compiled, compiled_grads) = results
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-6)
    assert eager["loss_attn"] > 0  # the capture recorded inside the compiled graph
    for n in eager_grads:
        torch.testing.assert_close(compiled_grads[n], eager_grads[n], rtol=1e-3, atol=1e-6)


def test_unet_with_lora_and_attention_capture_traces_as_one_graph(tiny_model_dir, small_refs):
    """No graph breaks: torch.compile sees the whole UNet forward, [V*] capture and LoRA included."""
    import torch._dynamo as dynamo

    from defectfill.diffusion.trainer import prepare_models, tokenize_prompts

    cfg = load_config(DefectFillTrainConfig, TINY_YAML, model=str(tiny_model_dir), data_dir=str(small_refs))
    s = prepare_models(cfg, str(tiny_model_dir), torch.device("cpu"), torch.float32)
    ids, token_index = tokenize_prompts(s.tokenizer, cfg, s.token_id)
    text = s.text_encoder(ids)[0].detach()
    s.store.start(torch.tensor([token_index]))
    try:
        explained = dynamo.explain(lambda x, t, c: s.unet(x, t, c).sample)(torch.randn(2, 9, 8, 8),
                                                                           torch.tensor([10, 500]), text)
        assert len(s.store.maps) > 0  # the traced call recorded cross-attention
    finally:
        s.store.stop()
        dynamo.reset()
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1
