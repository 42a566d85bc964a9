"""YAML configs mapped onto dataclasses, with `key=value` overrides and clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from defectfill.errors import ConfigError

T = TypeVar("T")

# The largest crop (source pixels per side) a config may ask for: a 8192² RGB crop is 200 MB in
# uint8 before resizing, far past any real defect's context; 100000 dies of memory instead.
MAX_CROP_SIZE = 8192


def check_mask_threshold(value: int) -> None:
    """Masks are compared on the 8-bit scale (16-bit masks are scaled to 0..255 by the reader), so a
    threshold outside 1..255 marks every pixel (0) or none (> 255) as defect."""
    if not 1 <= value <= 255:
        raise ConfigError(f"mask_threshold must be in 1..255 (8-bit mask scale; 16-bit masks are scaled to it), "
                          f"got {value}")


def check_choice(key: str, value: Any, choices) -> None:
    """ConfigError naming ``key``, the bad value and every valid choice, when ``value`` is not one."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def scheduler_types() -> tuple[str, ...]:
    """The learning-rate schedules diffusers' ``get_scheduler`` knows (its ``SchedulerType`` values)."""
    from diffusers.optimization import SchedulerType

    return tuple(t.value for t in SchedulerType)


# Accelerate's trackers (``LoggerType``) -> the pip package that provides each; "jsonl" is ours.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet-ml",
                    "aim": "aim", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab"}


def check_trackers(names: list[str]) -> None:
    """``log_with``: every name is ``jsonl``, ``all`` or one of Accelerate's trackers, and that tracker's
    package is installed (else: which package to install)."""
    import importlib

    from accelerate.utils import LoggerType

    known = ("jsonl", *(t.value for t in LoggerType))
    for name in names:
        check_choice("log_with", name, known)
        if name in TRACKER_PACKAGES:
            imports = importlib.import_module("accelerate.utils")
            available = getattr(imports, f"is_{name}_available", None)
            if available is not None and not available():
                raise ConfigError(f"log_with: tracker {name!r} is not installed (pip install {TRACKER_PACKAGES[name]})")


def check_image_sizes(crop_size: int | None, resolution: int | None) -> None:
    """crop_size: positive and at most MAX_CROP_SIZE; resolution: positive and a multiple of 8 (the
    VAE factor). None (GenerateConfig: take it from the LoRA) passes."""
    if crop_size is not None:
        if crop_size <= 0:
            raise ConfigError(f"crop_size must be positive, got {crop_size}")
        if crop_size > MAX_CROP_SIZE:
            raise ConfigError(f"crop_size must be at most {MAX_CROP_SIZE} source pixels, got {crop_size}; "
                              f"use a crop around the defect (the paper: 256..512)")
    if resolution is not None:
        if resolution <= 0:
            raise ConfigError(f"resolution must be positive, got {resolution}")
        if resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8 (the VAE factor), got {resolution}")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field hint such as `int | None`."""
    args = get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Parse override strings (YAML for non-text fields), then check the field's type."""
    base, optional = _base_type(hint)
    origin = get_origin(base) or base
    if isinstance(value, str):
        if optional and value.strip() in ("null", "None", "~"):
            return None
        if origin is float:
            try:
                value = float(value)  # YAML 1.1 reads "1e-4" as text
            except ValueError:
                pass
        elif origin is not str:
            value = yaml.safe_load(value)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty")
    if origin is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if origin is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
    if origin is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected text, got {value!r} (quote it in YAML)")
    if origin is list and not isinstance(value, list):
        value = [value]
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                **explicit: Any) -> T:
    """Build `cls` from a YAML file, then `key=value` overrides, then explicit keyword values
    (those that are not None). Unknown keys are errors naming the key and the file."""
    values: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        values.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = raw
        where = f"{where} / --set"
    values.update({k: v for k, v in explicit.items() if v is not None})
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    config = cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})
    if hasattr(config, "validate"):
        config.validate()
    return config


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def config_fingerprint(config: Any) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)


@dataclass
class GenerateConfig:
    """A DefectFill generation run: fine-tuned LoRA + defect-free images → labelled dataset.

    Unset values (None) come from the LoRA folder's `defectfill_lora.json` (base model, prompt,
    crop size, resolution, reference data).
    """

    lora_dir: str = ""  # DefectFill's trained LoRA folder
    clean_dir: str = ""
    output_dir: str = "runs/generated"
    generator: str = "defectfill"  # or copy_paste | multistage | dgt | r3gan | package.module:Class
    checkpoint: str | None = None  # the folder the generator's fit returned (DefectFill: its LoRA folder)
    generator_args: dict | None = None
    model: str | None = None
    masks: str = "auto"  # a folder of masks, or "auto": placed reference masks
    reference_dir: str | None = None  # reference data for auto masks
    defect_type: str | None = None  # restrict auto masks (and the label) to one class
    allow_rotation: bool = False  # 90° turns of auto masks swap warp and weft defects on fabric
    num_samples: int = 10
    candidates: int = 8
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    seed: int = 0
    prompt: str | None = None
    negative_prompt: str | None = None
    crop_size: int | None = None
    resolution: int | None = None
    dilation: int = 8  # composite band around the mask (source pixels); outside it: clean, bit for bit
    # Low-Fidelity Selection measure: lpips-lite0 (LPIPS-style, pretrained EfficientNet-Lite0) | lpips (the
    # paper's; its AlexNet is RANDOM unless lpips_weights) | l1 | l2 | ssim
    selection: str = "lpips-lite0"
    lpips_net: str = "alex"  # selection: lpips only
    lpips_weights: str | None = None  # selection: lpips only: local torchvision backbone weights (the paper's LPIPS)
    min_change: float = 2.0  # quality gate: mean |result − clean| inside the mask, 0..255
    # Truthful samples: masks placed on fabric only, labels = the requested pixels that visibly changed.
    fabric_only: bool = True  # auto masks avoid off-fabric (saturated / flat) regions
    roi_dir: str | None = None  # optional ROI masks (<clean stem>.png, non-zero = allowed) for placement
    match_fabric: bool = True  # auto masks: a reference of the clean image's fabric_type when the manifest says
    label_from_change: bool = True  # exported mask = requested ∩ visibly changed pixels
    visible_k: float = 0.5  # change threshold, in units of the clean fabric's fine-texture std
    visible_floor: float = 2.0  # grey levels: the least change that counts
    min_visible_fraction: float = 0.5  # below it (visible / requested pixels) the sample goes to rejected/
    max_off_fabric: float = 0.05  # above it (exported mask pixels off fabric) the sample goes to rejected/
    min_component_area: int = 1
    mask_threshold: int = 128
    mixed_precision: str = "no"  # fp16 | bf16: the pipeline's weights in that dtype
    enable_xformers: bool = False
    channels_last: bool = False  # UNet and VAE in channels_last (bench/speed/bench_lfs.py --features measures it)
    compile_unet: bool = False  # torch.compile the UNet (the first slot pays the compile)
    contact_sheet_samples: int = 12

    def validate(self) -> None:
        if not self.clean_dir:
            raise ConfigError("clean_dir is required (a folder of defect-free images)")
        for name in ("num_samples", "candidates", "num_inference_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.selection not in ("lpips-lite0", "lpips", "l1", "l2", "ssim"):
            raise ConfigError(f"selection must be lpips-lite0, lpips, l1, l2 or ssim, got {self.selection!r}")
        from defectfill.metrics.distances import LPIPS_NETS  # lazy: start-up time (torch)

        check_choice("lpips_net", self.lpips_net, LPIPS_NETS)
        if self.lpips_weights and self.selection != "lpips":
            raise ConfigError(f"lpips_weights is for selection: lpips (the paper's LPIPS); selection is "
                              f"{self.selection!r}: set selection: lpips or drop lpips_weights")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.dilation < 0:
            raise ConfigError(f"dilation must be >= 0, got {self.dilation}")
        for name in ("min_visible_fraction", "max_off_fabric"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_image_sizes(self.crop_size, self.resolution)
        check_mask_threshold(self.mask_threshold)
        if self.visible_k < 0 or self.visible_floor < 0:
            raise ConfigError(f"visible_k and visible_floor must be >= 0, got {self.visible_k}, {self.visible_floor}")
