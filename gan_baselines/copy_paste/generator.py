"""Copy-paste: the honest floor baseline for defect synthesis, behind the `Generator` interface.

No learning at all. It pastes the real reference defect a mask outlines:

- With an auto-placed mask (`placement`, from `run_generation`): the very reference defect whose
  mask was placed (same fabric type where the manifest says so), with the same flips, turns,
  scale and position, so the pasted pixels and the mask coincide.
- With a user's mask (no placement): a reference defect of the class picked by the seed, its mask's
  bounding box resized onto the target mask's box.

Blends:

- "contrast" (default): contrast transfer. The defect's signal is the reference minus its own
  fabric under the defect (OpenCV Telea inpainting of the reference mask grown by
  `signal_grow` px); the result is ``clean + signal`` on the mask, clean everywhere else. A dark
  thread stays as much darker than the target fabric as it was than its own.
- "alpha": feathered alpha compositing of ``ref_patch − mean(ref_surround) + mean(target_surround)``
  (surround = the ring within `dilation` px outside a mask); alpha is 1 on the target mask and
  falls linearly to 0 across `feather` px outward.
- "poisson": Poisson image editing (Pérez et al. 2003) with OpenCV's `seamlessClone`
  (NORMAL_CLONE) on a window around the mask; the clone region is the mask grown by 4 px
  (OpenCV erodes it by 3), so it needs `dilation >= 6`.

Pixels farther than `dilation` from the mask stay bit-identical to the clean image
(`preserves_background`; "contrast" changes mask pixels only), grayscale input gives grayscale
output, and the result depends only on (clean, mask, seed, class, placement). Not modelled:
without a placement, a reference whose shape differs from the target mask contributes only where
the two overlap ("contrast") or shows its own background inside the mask ("alpha", "poisson").

`fit` only records where the reference data lives (+ this config) in `<output_dir>/final/`, so
`from_checkpoint(final_dir)` works like the trained baselines; there are no weights (and no train.py).
The placing and blending functions are in model.py; this file is the `Generator` adapter.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from defectfill.config import load_config
from defectfill.data.datasets import ReferenceDataset, ReferenceSample, load_reference_dataset
from defectfill.errors import ConfigError, DataError
from defectfill.generation.compositing import blend_weights, mask_window
from defectfill.generators import Generator
from defectfill.runinfo import atomic_directory, write_run_info
from gan_baselines.copy_paste.model import (
    POISSON_GROW,
    POISSON_PAD,
    Fit,
    alpha_blend,
    bbox,
    box_fit,
    check_inputs,
    defect_signal,
    grow,
    poisson_blend,
    reference_pixels,
    surround_mean,
    union,
    warp_fit,
)
from gan_baselines.harness import config_from_init_args

NAME = "copy_paste"
CONFIG_NAME = "config.yaml"
BLENDS = ("contrast", "alpha", "poisson")
NO_WEIGHTS = "none: copy-paste has no learned weights (it pastes real reference defects)"


class UnknownDefectClass(DataError, ValueError):
    """The requested defect class has no reference defect (a ValueError, printed as one line)."""


@dataclass
class CopyPasteConfig:
    """Settings of the copy-paste baseline (see the module docstring)."""

    data_dir: str = "../shared/data/aitex"  # reference defects (images/, masks/, manifest.csv)
    defect_types: list[str] | None = None  # restrict the reference pool
    mask_threshold: int = 128
    blend: str = "contrast"  # contrast | alpha | poisson
    signal_grow: int = 2  # contrast: px the reference mask is grown by before inpainting its fabric
    feather: int = 3  # alpha: px of linear fall-off outside the mask (capped at dilation)
    dilation: int = 8  # composite band: beyond it the clean image is kept bit for bit
    crop_size: int = 128  # working window around the mask (source px), as `mask_window`

    def validate(self) -> None:
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be contrast, alpha or poisson, got {self.blend!r}")
        for name in ("feather", "dilation", "signal_grow"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_size <= 0:
            raise ConfigError(f"crop_size must be positive, got {self.crop_size}")
        if self.blend == "poisson" and self.dilation < 6:
            raise ConfigError(f"blend poisson needs dilation >= 6 (the clone region is the mask grown by "
                              f"{POISSON_GROW} px), got {self.dilation}")


# ---- the generator ----

class CopyPasteGenerator(Generator):
    """Copy-paste floor baseline: a real reference defect resized onto the mask and blended in."""

    name = NAME
    preserves_background = True

    def __init__(self, cfg: CopyPasteConfig | None = None, dataset: ReferenceDataset | None = None,
                 checkpoint: str | os.PathLike | None = None):
        self.cfg = cfg or CopyPasteConfig()
        self.cfg.validate()
        self.dilation = self.cfg.dilation
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self._dataset = dataset

    # -- reference data --
    @property
    def dataset(self) -> ReferenceDataset:
        """The reference defects (loaded from `cfg.data_dir` on first use)."""
        if self._dataset is None:
            self._dataset = load_reference_dataset(self.cfg.data_dir, mask_threshold=self.cfg.mask_threshold,
                                                   defect_types=self.cfg.defect_types)
        return self._dataset

    def pool(self, defect_class: str | None) -> list[ReferenceSample]:
        """Reference defects of `defect_class` (all allowed ones when None); errors name the class."""
        allowed = [s for s in self.dataset.samples
                   if self.cfg.defect_types is None or s.defect_type in self.cfg.defect_types]
        if not allowed:
            raise DataError(f"{self.dataset.root}: no reference defects of {self.cfg.defect_types}")
        chosen = [s for s in allowed if defect_class is None or s.defect_type == defect_class]
        if not chosen:
            available = ", ".join(sorted({s.defect_type for s in allowed}))
            raise UnknownDefectClass(f"{self.dataset.root}: no reference defect of class {defect_class!r} "
                                     f"(available: {available}); pick one with defect_type")
        return chosen

    def pick_reference(self, defect_class: str | None, seed: int) -> ReferenceSample:
        """The reference defect for this seed: uniform over the class's pool (the only random draw)."""
        pool = self.pool(defect_class)
        return pool[int(np.random.default_rng(seed).integers(len(pool)))]

    # -- Generator interface --
    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int, defect_class: str | None = None,
                   placement=None) -> tuple[np.ndarray, dict]:
        """Paste onto `mask` of `clean` the reference defect `placement` names (as it was placed), or
        else one of `defect_class` picked by `seed` (module docstring)."""
        clean, mask = check_inputs(clean, mask)
        if placement is not None:
            ref, fit = placement.reference, placement.placement
            ref_box = bbox(ref.mask)
        else:
            ref = self.pick_reference(defect_class, seed)
            ref_box, fit = bbox(ref.mask), box_fit(bbox(mask))
        target_box = bbox(mask)
        margin = max(self.cfg.dilation, POISSON_GROW) + 2
        wy, wx, wh, ww = union(mask_window(mask, self.cfg.crop_size), grow(target_box, margin, mask.shape))
        window, window_mask = clean[wy:wy + wh, wx:wx + ww], mask[wy:wy + wh, wx:wx + ww]
        blended = self.paste(window, window_mask, (wy, wx, wh, ww), ref, ref_box, fit, surround=(clean, mask))
        band = blend_weights(window_mask, self.cfg.dilation) > 0  # background fidelity, enforced
        result = clean.copy()
        result[wy:wy + wh, wx:wx + ww] = np.where(band if clean.ndim == 2 else band[..., None], blended, window)
        y0, x0, h, w = target_box
        ry, rx, rh, rw = ref_box
        return result, {"reference_id": ref.id, "reference_class": ref.defect_type, "blend": self.cfg.blend,
                        "placed_reference": placement is not None,
                        "bbox_xyxy": [x0, y0, x0 + w, y0 + h], "reference_bbox_xyxy": [rx, ry, rx + rw, ry + rh],
                        "window_yxhw": [wy, wx, wh, ww]}

    def paste(self, window: np.ndarray, window_mask: np.ndarray, where: tuple[int, int, int, int],
              ref: ReferenceSample, ref_box: tuple[int, int, int, int], fit: Fit,
              surround: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The target `window` (at `where` = y0, x0, h, w in the clean image) with the reference defect
        placed by `fit` blended in; `surround` = the full (clean, mask) for the alpha mean shift."""
        pixels = reference_pixels(ref, grayscale=window.ndim == 2)
        if self.cfg.blend == "contrast":
            signal = defect_signal(pixels, ref.mask, self.cfg.signal_grow)
            placed = warp_fit(signal, ref_box, fit, where, border=cv2.BORDER_CONSTANT)
            keep = window_mask if window.ndim == 2 else window_mask[..., None]
            out = np.clip(np.rint(window.astype(np.float32) + placed), 0, 255).astype(np.uint8)
            return np.where(keep, out, window)
        source = pixels.astype(np.float32)
        p = POISSON_PAD  # the patch is cut with p px of extra reference context on every side
        wy, wx, wh, ww = where
        pasted = warp_fit(source, ref_box, fit, (wy - p, wx - p, wh + 2 * p, ww + 2 * p))
        if self.cfg.blend == "poisson":
            return poisson_blend(window, pasted, window_mask)
        ring = max(self.cfg.dilation, 1)
        shift = surround_mean(*surround, ring) - surround_mean(source, ref.mask, ring)
        return alpha_blend(window, pasted[p:-p, p:-p] + shift.astype(np.float32), window_mask,
                           min(self.cfg.feather, self.cfg.dilation))

    def metadata(self) -> dict:
        return {"generator": self.name, "data_dir": str(self.cfg.data_dir), "weights": NO_WEIGHTS,
                "learned_weights": False, "checkpoint": self.checkpoint,
                "settings": dataclasses.asdict(self.cfg)}

    @classmethod
    def from_init_args(cls, init_args: dict | None = None) -> CopyPasteGenerator:
        """CopyPasteConfig keys, inline (e.g. configs/generators/copy_paste.yaml's init_args); nothing is trained."""
        return cls(config_from_init_args(CopyPasteConfig, init_args, NAME))

    def fit(self, dataset: ReferenceDataset | None, output_dir: str | os.PathLike, seed: int = 0) -> Path:
        """No training: record the reference data location, its classes and this config in
        `<output_dir>/final/config.yaml` (+ run_info.json) for `from_checkpoint`."""
        if dataset is not None:
            self._dataset = dataset
            self.cfg.data_dir = str(Path(dataset.root).resolve())
            if self.cfg.defect_types is None:  # the classes this dataset holds: the reload's pool is the same
                self.cfg.defect_types = dataset.defect_types
        self.pool(None)  # fails now, naming the folder, if nothing can be pasted
        config = {**dataclasses.asdict(self.cfg), "baseline": self.name}
        final = Path(output_dir) / "final"
        with atomic_directory(final) as tmp:
            (tmp / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
            write_run_info(tmp, config, None, weights=NO_WEIGHTS,
                           num_references=len(self.dataset), defect_types=self.dataset.defect_types)
        write_run_info(output_dir, config, None, weights=NO_WEIGHTS, final_dir=str(final))
        self.checkpoint = str(final)
        return final

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", **kwargs) -> CopyPasteGenerator:
        """Load from the `final/` folder `fit` wrote (or its run folder); `kwargs` override its keys."""
        if checkpoint is None:
            raise ConfigError("copy_paste needs checkpoint: the final/ folder its fit wrote")
        folder = Path(checkpoint)
        if not (folder / CONFIG_NAME).is_file() and (folder / "final" / CONFIG_NAME).is_file():
            folder = folder / "final"
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: missing; not a copy_paste run folder (run its fit first)")
        return cls(read_config(path, kwargs), checkpoint=folder)


def read_config(path: Path, overrides: dict | None = None) -> CopyPasteConfig:
    """`CopyPasteConfig` from a flat YAML of its keys (the record `fit` writes), then `overrides`; errors
    name the file."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})".splitlines()[0]) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    baseline = values.pop("baseline", NAME)
    if baseline != NAME:
        raise ConfigError(f"{path}: written by baseline {baseline!r}, not {NAME}")
    known = [f.name for f in dataclasses.fields(CopyPasteConfig)]
    for where, keys in ((f"{path}:", values), ("copy_paste generator_args:", overrides or {})):
        unknown = sorted(set(keys) - set(known))
        if unknown:
            raise ConfigError(f"{where} unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    values.update(overrides or {})
    try:
        return load_config(CopyPasteConfig, **values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
