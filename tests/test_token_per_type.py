"""One learned token per defect type (token_per_type): each sample trains its type's token, the LoRA
folder carries every token, generation prompts each mask with its type's token."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defectfill.config import load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.errors import ConfigError, ModelError

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "defectfill" / "tiny.yaml"


def test_token_names_per_type():
    cfg = DefectFillTrainConfig(token_per_type=True)
    assert cfg.tokens_by_type(["hole", "broken yarn"]) == {"hole": "<v*-hole>", "broken yarn": "<v*-broken_yarn>"}
    assert DefectFillTrainConfig(token_per_type=True, placeholder_token="sks").tokens_by_type(["hole"]) == \
        {"hole": "sks-hole"}
    assert DefectFillTrainConfig().tokens_by_type(["hole"]) == {}
    assert cfg.prompts("<v*-hole>") == ("A photo of <v*-hole>", "A fabric with <v*-hole>")


def test_batch_prompt_ids_pick_each_samples_token_row():
    from defectfill.diffusion.trainer import batch_prompt_ids

    table = torch.arange(3 * 2 * 4).reshape(3, 2, 4)  # 3 tokens x (defect, object) x 4 ids
    assert torch.equal(batch_prompt_ids(table, None), table[0])
    got = batch_prompt_ids(table, [2, 0])
    assert torch.equal(got, torch.stack([table[2, 0], table[0, 0], table[2, 1], table[0, 1]]))


def test_placeholder_embedding_replaces_each_token_with_its_own_row():
    from defectfill.diffusion.models.lora import PlaceholderEmbedding

    base = torch.nn.Embedding(10, 3)
    emb = PlaceholderEmbedding(base, [7, 9])
    with torch.no_grad():
        emb.vector.copy_(torch.tensor([[1.0, 1, 1], [2.0, 2, 2]]))
    out = emb(torch.tensor([[7, 2, 9]]))
    assert torch.equal(out[0, 0], torch.ones(3)) and torch.equal(out[0, 2], torch.full((3,), 2.0))
    assert torch.equal(out[0, 1], base.weight[2])
    assert torch.equal(emb.row(9), torch.full((3,), 2.0))


@pytest.fixture(scope="module")
def per_type_run(tiny_model_dir, woven_root, tmp_path_factory):
    from defectfill.diffusion.trainer import train

    out = tmp_path_factory.mktemp("per-type") / "run"
    cfg = load_config(DefectFillTrainConfig, TINY_YAML, model=str(tiny_model_dir), data_dir=str(woven_root),
                      output_dir=str(out), token_per_type=True)
    return cfg, train(cfg)


def test_each_type_trains_its_own_token_and_the_folder_carries_all(per_type_run, tiny_model_dir):
    """Tokens of types drawn in some training batch moved from their initialisation; a type never drawn
    stays exactly at it (its row gets no gradient); recomputed from the sampler's batches."""
    from defectfill.data.datasets import DefectCropSampler, load_reference_dataset
    from defectfill.diffusion.models.pipeline import load_inpaint_pipeline

    cfg, lora = per_type_run
    meta = json.loads((lora / "defectfill_lora.json").read_text())
    dataset = load_reference_dataset(cfg.data_dir)
    assert meta["tokens_by_type"] == {t: f"<v*-{t}>" for t in dataset.defect_types}
    assert meta["defect_prompts_by_type"]["hole"] == "A photo of <v*-hole>"
    rows = load_file(str(lora / "learned_embeds.safetensors"))
    assert set(rows) == set(meta["tokens_by_type"].values())

    sampler = DefectCropSampler(dataset, cfg.crop_size, cfg.resolution, cfg.seed, hflip=cfg.hflip, vflip=cfg.vflip)
    type_of = {s.id: s.defect_type for s in dataset.samples}
    drawn = {type_of[i] for step in range(cfg.max_train_steps)
             for i in sampler.batch(step, 0, cfg.train_batch_size)["ids"]}
    pipe = load_inpaint_pipeline(str(tiny_model_dir))
    init_ids = pipe.tokenizer(cfg.initializer_token, add_special_tokens=False).input_ids
    init = pipe.text_encoder.get_input_embeddings().weight[init_ids].mean(dim=0)
    for t, token in meta["tokens_by_type"].items():
        moved = (rows[token] - init).abs().max().item()
        assert (moved > 1e-6) == (t in drawn), (t, moved, drawn)
    assert drawn, "no type drawn"

    tuned = load_inpaint_pipeline(str(tiny_model_dir), lora_dir=lora)
    for token in meta["tokens_by_type"].values():  # every token loaded, with its own trained row
        token_id = tuned.tokenizer.convert_tokens_to_ids(token)
        assert torch.allclose(tuned.text_encoder.get_input_embeddings().weight[token_id], rows[token])


def test_generation_prompts_each_mask_with_its_types_token(per_type_run, tiny_model_dir, woven_root, tmp_path):
    from defectfill.config import GenerateConfig
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer

    _, lora = per_type_run
    gen_cfg = GenerateConfig(lora_dir=str(lora), clean_dir=str(woven_root / "good"), output_dir=str(tmp_path / "o"),
                             model=str(tiny_model_dir), candidates=2, num_inference_steps=2)
    synth = DefectFillSynthesizer(gen_cfg)
    assert synth.prompt_for("stain") == "A photo of <v*-stain>"
    with pytest.raises(ModelError, match="no learned token for defect type 'scratch'.*broken_yarn"):
        synth.prompt_for("scratch")
    clean = np.full((128, 128, 3), 120, np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[50:70, 40:90] = True
    _, info = synth.synthesize(clean, mask, seed=3, defect_class="hole")
    assert info["prompt"] == "A photo of <v*-hole>"

    masks_folder = GenerateConfig(lora_dir=str(lora), clean_dir=str(woven_root / "good"), masks=str(tmp_path),
                                  output_dir=str(tmp_path / "o2"), model=str(tiny_model_dir))
    with pytest.raises(ConfigError, match="one token per defect type.*--defect-type"):
        DefectFillSynthesizer.check(masks_folder)
