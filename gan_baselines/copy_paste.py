"""Copy-paste: the honest floor baseline for defect synthesis, behind the `Generator` interface.

No learning at all. For a target (clean image, mask, seed, class) it picks a real reference
defect of that class at random (the seed's only use), cuts the reference's defect region (the
bounding box of its mask), resizes it onto the target mask's bounding box and blends it in:

- "alpha" (default): feathered alpha compositing. Alpha is 1 on the target mask and falls
  linearly to 0 across `feather` px outward (never beyond `dilation`). The patch keeps the
  defect's contrast *relative to its own surroundings*: what is pasted is
  ``ref_patch − mean(ref_surround) + mean(target_surround)``, where a surround is the ring of
  pixels within `dilation` px outside a mask (reference mask in the reference image, target
  mask in the clean image), per channel.
- "poisson": Poisson image editing (Pérez et al. 2003) with OpenCV's `seamlessClone`
  (NORMAL_CLONE) on a window around the mask. OpenCV erodes the clone mask by 3 px before
  taking the patch gradients, so the clone region is the target mask grown by 4 px (3x3
  steps), which needs `dilation >= 6` to stay inside the composite band. No mean shift: the
  Poisson boundary condition sets the level.

Either way, pixels farther than `dilation` from the target mask stay bit-identical to the clean
image (`preserves_background`), grayscale input gives grayscale output, and the result depends
only on (clean, mask, seed, class). What is *not* modelled: the pasted defect takes the target
mask's box, so a reference whose shape differs from the target mask shows reference background
inside parts of the mask; no rotation or texture alignment to the target fabric.

`fit` only records where the reference data lives (+ this config) in `<output_dir>/final/`, so
`from_checkpoint(final_dir)` works like the trained baselines; there are no weights.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from scipy import ndimage

from defectfill.data.datasets import ReferenceDataset, ReferenceSample, load_reference_dataset
from defectfill.errors import ConfigError, DataError, one_line_errors
from defectfill.generate import blend_weights, mask_window
from defectfill.generators import Generator

NAME = "copy_paste"
CONFIG_NAME = "config.yaml"
BLENDS = ("alpha", "poisson")
POISSON_GROW = 4  # 3x3 dilation steps of the clone mask: OpenCV erodes it by 3, +1 for the gradient
POISSON_PAD = POISSON_GROW + 2  # context around the window, so the clone region never reaches its frame
NO_WEIGHTS = "none: copy-paste has no learned weights (it pastes real reference defects)"


class UnknownDefectClass(DataError, ValueError):
    """The requested defect class has no reference defect (a ValueError, printed as one line)."""


@dataclass
class CopyPasteConfig:
    """Settings of the copy-paste baseline (see the module docstring)."""

    data_dir: str = "../shared/data/aitex"  # reference defects (images/, masks/, manifest.csv)
    defect_types: list[str] | None = None  # restrict the reference pool
    mask_threshold: int = 128
    blend: str = "alpha"  # alpha | poisson
    feather: int = 3  # alpha: px of linear fall-off outside the mask (capped at dilation)
    dilation: int = 8  # composite band: beyond it the clean image is kept bit for bit
    crop_size: int = 128  # working window around the mask (source px), as `mask_window`

    def validate(self) -> None:
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be alpha or poisson, got {self.blend!r}")
        for name in ("feather", "dilation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.crop_size <= 0:
            raise ConfigError(f"crop_size must be positive, got {self.crop_size}")
        if self.blend == "poisson" and self.dilation < 6:
            raise ConfigError(f"blend poisson needs dilation >= 6 (the clone region is the mask grown by "
                              f"{POISSON_GROW} px), got {self.dilation}")


# ---- pure helpers ----

def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the bounding box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty mask")
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def grow(box: tuple[int, int, int, int], margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (y0, x0, h, w) grown by `margin` px on every side, clipped to an image of `shape`."""
    y0, x0, h, w = box
    y1, x1 = min(shape[0], y0 + h + margin), min(shape[1], x0 + w + margin)
    y0, x0 = max(0, y0 - margin), max(0, x0 - margin)
    return y0, x0, y1 - y0, x1 - x0


def union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Smallest (y0, x0, h, w) box containing boxes `a` and `b`."""
    y0, x0 = min(a[0], b[0]), min(a[1], b[1])
    return y0, x0, max(a[0] + a[2], b[0] + b[2]) - y0, max(a[1] + a[3], b[1] + b[3]) - x0


def surround_mean(image: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """Per-channel mean of the surround: pixels outside `mask` within `width` px of it (Euclidean).
    Falls back to the whole image when there is no such pixel (a mask covering everything)."""
    y0, x0, h, w = grow(bbox(mask), width + 1, mask.shape)
    sub_mask = mask[y0:y0 + h, x0:x0 + w]
    distance = ndimage.distance_transform_edt(~sub_mask)
    ring = (distance > 0) & (distance <= max(width, 1))
    pixels = image[y0:y0 + h, x0:x0 + w][ring] if ring.any() else image.reshape(-1, *image.shape[2:])
    return pixels.astype(np.float64).mean(axis=0)


def warp_patch(source: np.ndarray, src_box: tuple[int, int, int, int], dst_box: tuple[int, int, int, int],
               out_hw: tuple[int, int]) -> np.ndarray:
    """Resample `source` (float32) so that its box `src_box` lands exactly on `dst_box` of an
    `out_hw` canvas (pixel-centre aligned scale + shift, bilinear, reflected borders): the
    reference defect region resized to the target box, with its real context around it."""
    sy0, sx0, sh, sw = src_box
    dy0, dx0, dh, dw = dst_box
    fy, fx = sh / dh, sw / dw
    to_source = np.array([[fx, 0.0, sx0 + (0.5 - dx0) * fx - 0.5],
                          [0.0, fy, sy0 + (0.5 - dy0) * fy - 0.5]])
    return cv2.warpAffine(source, to_source, (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def alpha_blend(clean: np.ndarray, pasted: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """Feathered alpha compositing: alpha 1 on `mask`, linear fall-off over `feather` px, 0 beyond
    (`blend_weights`); pixels with alpha 0 are `clean` unchanged."""
    alpha = blend_weights(mask, feather)
    a = alpha if clean.ndim == 2 else alpha[..., None]
    mixed = np.clip(np.rint(a * pasted + (1 - a) * clean.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.where(a > 0, mixed, clean)


def poisson_blend(clean: np.ndarray, pasted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Poisson image editing with `cv2.seamlessClone` (NORMAL_CLONE): the patch's gradients inside
    the mask grown by `POISSON_GROW` px, the clean image as boundary; `clean` elsewhere.

    `pasted` covers the window plus `POISSON_PAD` px on every side (real reference context), and
    the clean window is reflect-padded by as much, so a mask at the image edge still has clean
    boundary around it (seamlessClone fixes the pixels on its region's bounding rectangle)."""
    pad = POISSON_PAD
    region = cv2.dilate(np.pad(mask, pad).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=POISSON_GROW)
    as3 = (lambda a: np.repeat(a[..., None], 3, axis=2)) if clean.ndim == 2 else (lambda a: a)
    dst = cv2.copyMakeBorder(as3(clean), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    src = as3(np.clip(np.rint(pasted), 0, 255).astype(np.uint8))
    x, y, w, h = cv2.boundingRect(region)
    cloned = cv2.seamlessClone(src, dst, region * 255, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    cloned, keep = cloned[pad:-pad, pad:-pad], region[pad:-pad, pad:-pad] > 0
    if clean.ndim == 2:
        cloned = cloned[..., 0]
    return np.where(keep if clean.ndim == 2 else keep[..., None], cloned, clean)


def reference_pixels(sample: ReferenceSample, grayscale: bool) -> np.ndarray:
    """The reference image as float32, HxW (luminance) for grayscale targets, else HxWx3 RGB."""
    image = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY) if grayscale else sample.image
    return image.astype(np.float32)


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
    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int,
                   defect_class: str | None = None) -> tuple[np.ndarray, dict]:
        """Paste a reference defect of `defect_class` onto `mask` of `clean` (module docstring)."""
        clean, mask = check_inputs(clean, mask)
        ref = self.pick_reference(defect_class, seed)
        target_box, ref_box = bbox(mask), bbox(ref.mask)
        margin = max(self.cfg.dilation, POISSON_GROW) + 2
        wy, wx, wh, ww = union(mask_window(mask, self.cfg.crop_size), grow(target_box, margin, mask.shape))
        window, window_mask = clean[wy:wy + wh, wx:wx + ww], mask[wy:wy + wh, wx:wx + ww]
        local_box = (target_box[0] - wy, target_box[1] - wx, target_box[2], target_box[3])
        blended = self.paste(window, window_mask, local_box, ref, ref_box, surround=(clean, mask))
        band = blend_weights(window_mask, self.cfg.dilation) > 0  # background fidelity, enforced
        result = clean.copy()
        result[wy:wy + wh, wx:wx + ww] = np.where(band if clean.ndim == 2 else band[..., None], blended, window)
        y0, x0, h, w = target_box
        ry, rx, rh, rw = ref_box
        return result, {"reference_id": ref.id, "reference_class": ref.defect_type, "blend": self.cfg.blend,
                        "bbox_xyxy": [x0, y0, x0 + w, y0 + h], "reference_bbox_xyxy": [rx, ry, rx + rw, ry + rh],
                        "window_yxhw": [wy, wx, wh, ww]}

    def paste(self, window: np.ndarray, window_mask: np.ndarray, box: tuple[int, int, int, int],
              ref: ReferenceSample, ref_box: tuple[int, int, int, int],
              surround: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The window with the reference defect region (`ref_box`) resized onto `box` and blended
        in (alpha with the surround mean shift, or Poisson); `surround` = the full (clean, mask)."""
        source = reference_pixels(ref, grayscale=window.ndim == 2)
        p = POISSON_PAD  # the patch is cut with p px of extra reference context on every side
        h, w = window_mask.shape
        pasted = warp_patch(source, ref_box, (box[0] + p, box[1] + p, box[2], box[3]), (h + 2 * p, w + 2 * p))
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

    def fit(self, dataset: ReferenceDataset | None, output_dir: str | os.PathLike) -> Path:
        """No training: record the reference data location, its classes and this config in
        `<output_dir>/final/config.yaml` (+ run_info.json) for `from_checkpoint`."""
        from defectfill.runinfo import atomic_directory, write_run_info

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
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", **kwargs) -> "CopyPasteGenerator":
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
    """`CopyPasteConfig` from a YAML file (a `fit` record or configs/gan/copy_paste.yaml), then
    `overrides`; errors name the file."""
    from defectfill.config import load_config

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


def check_inputs(clean: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxW or HxWx3 clean image and a non-empty bool HxW mask of the same size."""
    clean, mask = np.asarray(clean), np.asarray(mask).astype(bool)
    if clean.dtype != np.uint8 or not (clean.ndim == 2 or (clean.ndim == 3 and clean.shape[2] == 3)):
        raise ValueError(f"clean must be uint8 HxW or HxWx3, got {clean.dtype} {clean.shape}")
    if mask.shape != clean.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the clean image {clean.shape[:2]}")
    if not mask.any():
        raise ValueError("mask is empty")
    return clean, mask


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """`python -m gan_baselines.copy_paste --config configs/gan/copy_paste.yaml --output-dir runs/copy_paste`:
    "fit" (record data + config) so `defectfill generate --generator copy_paste --checkpoint <run>/final` works."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gan_baselines.copy_paste", description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.overrides if "=" in item)
    if len(overrides) != len(args.overrides):
        raise ConfigError(f"--set expects KEY=VALUE, got {args.overrides}")
    generator = CopyPasteGenerator(read_config(Path(args.config), overrides))
    print(f"copy_paste run folder: {generator.fit(None, args.output_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
