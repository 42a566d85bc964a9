"""Tests for defectfill.config: YAML + key=value overrides + explicit values, errors, shipped configs."""

from pathlib import Path

import pytest

from defectfill.config import load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.errors import ConfigError

REPO_ROOT = Path(__file__).parents[1]
CONFIGS = REPO_ROOT / "configs" / "defectfill"


def _yaml(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(DefectFillTrainConfig)
    assert cfg == DefectFillTrainConfig()
    assert cfg.train_batch_size == 4 and cfg.resolution == 512


def test_yaml_file_values(tmp_path):
    path = _yaml(tmp_path, "lora_rank: 16\nobject_name: leather\nlambda_def: 1\nhflip: false\n"
                           "defect_types: hole\nlog_with: [jsonl, all]\nmax_samples: null\n")
    cfg = load_config(DefectFillTrainConfig, path)
    assert cfg.lora_rank == 16
    assert cfg.object_name == "leather"
    assert cfg.lambda_def == 1.0 and isinstance(cfg.lambda_def, float)  # int in YAML -> float field
    assert cfg.hflip is False
    assert cfg.defect_types == ["hole"]  # a scalar for a list field becomes a one-item list
    assert cfg.log_with == ["jsonl", "all"]
    assert cfg.max_samples is None
    # untouched keys keep their defaults
    assert cfg.lambda_obj == 0.2 and cfg.num_boxes == 30


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(DefectFillTrainConfig, _yaml(tmp_path, "# nothing\n")) == DefectFillTrainConfig()


def test_overrides_are_typed_and_beat_the_file(tmp_path):
    path = _yaml(tmp_path, "train_batch_size: 2\nlearning_rate_unet: 1.0e-3\nvflip: true\n")
    cfg = load_config(
        DefectFillTrainConfig,
        path,
        [
            "train_batch_size=8",
            "learning_rate_unet=3.0e-4",
            "lambda_attn=0.1",
            "vflip=false",
            "defect_types=[hole, stain]",
            "log_with=all",
            "max_samples=12",
            "object_name=leather",
            "checkpoints_total_limit=null",
        ],
    )
    assert cfg.train_batch_size == 8 and isinstance(cfg.train_batch_size, int)
    assert cfg.learning_rate_unet == pytest.approx(3e-4)
    assert cfg.lambda_attn == pytest.approx(0.1)
    assert cfg.vflip is False
    assert cfg.defect_types == ["hole", "stain"]
    assert cfg.log_with == ["all"]
    assert cfg.max_samples == 12
    assert cfg.object_name == "leather"
    assert cfg.checkpoints_total_limit is None


def test_override_float_scientific_without_dot():
    # YAML 1.1 reads '1e-4' (no dot) as text; float fields must still accept it
    cfg = load_config(DefectFillTrainConfig, None, ["learning_rate_unet=1e-4", "learning_rate_text=2E-5"])
    assert cfg.learning_rate_unet == pytest.approx(1e-4)
    assert cfg.learning_rate_text == pytest.approx(2e-5)


def test_file_float_scientific_without_dot(tmp_path):
    cfg = load_config(DefectFillTrainConfig, _yaml(tmp_path, "learning_rate_unet: 1e-4\n"))
    assert cfg.learning_rate_unet == pytest.approx(1e-4)


def test_override_value_may_contain_equals_sign():
    cfg = load_config(DefectFillTrainConfig, None, ["output_dir=runs/a=b"])
    assert cfg.output_dir == "runs/a=b"


def test_explicit_values_win_and_none_is_ignored(tmp_path):
    path = _yaml(tmp_path, "max_train_steps: 10\nseed: 3\noutput_dir: runs/from_file\n")
    cfg = load_config(DefectFillTrainConfig, path, ["max_train_steps=20", "seed=4"],
                      max_train_steps=30, output_dir="runs/explicit", seed=None)
    assert cfg.max_train_steps == 30  # explicit > override > file
    assert cfg.output_dir == "runs/explicit"  # explicit > file
    assert cfg.seed == 4  # explicit None does not override


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _yaml(tmp_path, "lora_rank: 4\nlearning_rate: 1.0e-4\n", name="bad_key.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(DefectFillTrainConfig, path)
    assert "learning_rate" in str(exc.value)
    assert str(path) in str(exc.value)


def test_unknown_key_in_override_names_key():
    with pytest.raises(ConfigError, match="lambda_foo"):
        load_config(DefectFillTrainConfig, None, ["lambda_foo=1"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="seed"):
        load_config(DefectFillTrainConfig, None, ["seed"])


def test_missing_file_names_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(DefectFillTrainConfig, path)
    assert str(path) in str(exc.value)


def test_invalid_yaml_names_file(tmp_path):
    path = _yaml(tmp_path, "lora_rank: [1, 2\nseed: 0\n", name="broken.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(DefectFillTrainConfig, path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)  # one-line message


def test_non_mapping_yaml_is_an_error(tmp_path):
    path = _yaml(tmp_path, "- a\n- b\n", name="list.yaml")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(DefectFillTrainConfig, path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train_batch_size=abc", "train_batch_size"),
        ("train_batch_size=2.5", "train_batch_size"),
        ("train_batch_size=true", "train_batch_size"),
        ("lambda_def=high", "lambda_def"),
        ("lambda_def=true", "lambda_def"),
        ("hflip=1", "hflip"),
        ("max_samples=many", "max_samples"),
    ],
)
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(DefectFillTrainConfig, None, [override])
    assert key in str(exc.value)


def test_wrong_type_in_file_names_key(tmp_path):
    path = _yaml(tmp_path, "lora_rank: eight\n")
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(DefectFillTrainConfig, path)


def test_validate_rejects_resolution_not_multiple_of_8():
    with pytest.raises(ConfigError, match="multiple of 8"):
        DefectFillTrainConfig(resolution=500).validate()
    with pytest.raises(ConfigError, match="resolution"):
        load_config(DefectFillTrainConfig, None, ["resolution=260"])
    DefectFillTrainConfig(resolution=264).validate()  # 264 = 33 * 8 is fine


def test_validate_rejects_prompts_without_token():
    with pytest.raises(ConfigError, match="token"):
        DefectFillTrainConfig(defect_prompt="A photo of a defect").validate()
    with pytest.raises(ConfigError, match="token"):
        load_config(DefectFillTrainConfig, None, ["object_prompt=A {object} with holes"])


@pytest.mark.parametrize("override", ["train_batch_size=0", "lora_rank=-1", "mixed_precision=fp8",
                                      "box_min_frac=0.5", "num_boxes=0"])
def test_validate_rejects_other_bad_values(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(DefectFillTrainConfig, None, [override])


def test_prompts_default_and_custom():
    assert DefectFillTrainConfig().prompts() == ("A photo of <v*>", "A fabric with <v*>")
    cfg = DefectFillTrainConfig(placeholder_token="<s1>", object_name="leather")
    assert cfg.prompts() == ("A photo of <s1>", "A leather with <s1>")


def test_shipped_sd2_config_has_paper_defaults():
    cfg = load_config(DefectFillTrainConfig, CONFIGS / "sd2_lora.yaml")
    assert cfg.model == "sd2-community/stable-diffusion-2-inpainting"
    assert cfg.resolution == 512
    assert cfg.train_batch_size == 4
    assert cfg.max_train_steps == 2000
    assert cfg.lora_rank == 8
    assert cfg.learning_rate_unet == pytest.approx(2e-4)
    assert cfg.learning_rate_text == pytest.approx(4e-5)
    assert (cfg.lambda_def, cfg.lambda_obj, cfg.lambda_attn) == pytest.approx((0.5, 0.2, 0.05))
    assert cfg.alpha == pytest.approx(0.3)
    assert cfg.num_boxes == 30
    assert cfg.prompts() == ("A photo of <v*>", "A fabric with <v*>")


def test_shipped_tiny_config_loads():
    cfg = load_config(DefectFillTrainConfig, CONFIGS / "tiny.yaml")
    assert cfg.model == "runs/tiny-sd2-inpainting"
    assert cfg.resolution == 64 and cfg.resolution % 8 == 0
    assert cfg.lora_rank == 4
    assert cfg.train_batch_size == 2
    assert cfg.max_train_steps == 6
    assert cfg.learning_rate_unet == pytest.approx(1e-3)
    assert cfg.mixed_precision == "no"


def test_text_fields_keep_digit_strings():
    # an all-digit revision must not be read as a (octal) number
    cfg = load_config(DefectFillTrainConfig, None, ["revision=0123", "variant=fp16"])
    assert cfg.revision == "0123" and cfg.variant == "fp16"
    assert load_config(DefectFillTrainConfig, None, ["revision=null"]).revision is None


# ---- range checks: one line naming the key, for both the train and the generate config ----

@pytest.mark.parametrize("override", [
    "mask_threshold=0", "mask_threshold=256", "mask_threshold=-3", "crop_size=0", "crop_size=-8",
    "crop_size=100000", "resolution=0", "resolution=100", "alpha=1.5", "alpha=-0.1", "lambda_def=-1",
    "lambda_obj=-0.2", "lambda_attn=-0.05", "learning_rate_unet=0", "learning_rate_text=-1e-4",
    "learning_rate_token=0", "lora_alpha=0", "lora_alpha=-4", "log_every=0", "max_samples=0",
    "checkpoints_total_limit=0", "object_loss_weighting=squared",
])
def test_train_config_range_checks_name_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key) as exc:
        load_config(DefectFillTrainConfig, None, [override])
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("override", [
    "mask_threshold=1", "mask_threshold=255", "crop_size=1", "crop_size=8192", "alpha=0", "alpha=1",
    "lambda_def=0", "lambda_attn=0", "learning_rate_token=1e-5", "lora_alpha=16", "lora_alpha=null",
    "checkpoints_total_limit=1", "checkpoints_total_limit=null", "object_loss_weighting=alpha",
])
def test_train_config_range_edges_are_accepted(override):
    load_config(DefectFillTrainConfig, None, [override])


def test_object_loss_weighting_defaults_to_the_paper():
    assert DefectFillTrainConfig().object_loss_weighting == "paper"
    assert load_config(DefectFillTrainConfig, CONFIGS / "sd2_lora.yaml").object_loss_weighting == "paper"
    assert DefectFillTrainConfig().overwrite is False


def _gen(**kw):
    from defectfill.config import GenerateConfig

    return GenerateConfig(lora_dir="lora", clean_dir="clean", **kw)


@pytest.mark.parametrize("kw, key", [
    ({"mask_threshold": 0}, "mask_threshold"), ({"mask_threshold": 256}, "mask_threshold"),
    ({"crop_size": 0}, "crop_size"), ({"crop_size": -1}, "crop_size"), ({"crop_size": 100000}, "crop_size"),
    ({"resolution": 0}, "resolution"), ({"resolution": 100}, "resolution"), ({"resolution": -64}, "resolution"),
])
def test_generate_config_range_checks_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key) as exc:
        _gen(**kw).validate()
    assert "\n" not in str(exc.value)


def test_generate_config_unset_sizes_and_edges_pass():
    _gen().validate()  # crop_size / resolution None: taken from the LoRA folder
    _gen(crop_size=8192, resolution=8, mask_threshold=255).validate()
    _gen(crop_size=1, resolution=512, mask_threshold=1).validate()


def test_train_and_generate_share_the_same_rules():
    from defectfill.config import MAX_CROP_SIZE

    for kw in ({"crop_size": 0}, {"crop_size": MAX_CROP_SIZE + 1}, {"resolution": 260}, {"mask_threshold": 0}):
        with pytest.raises(ConfigError) as train_exc:
            DefectFillTrainConfig(**kw).validate()
        with pytest.raises(ConfigError) as gen_exc:
            _gen(**kw).validate()
        assert str(train_exc.value) == str(gen_exc.value)
