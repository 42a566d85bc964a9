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
from defectfill.errors import ConfigError, DataError, check_writable, one_line_errors, output_errors
from defectfill.generation.compositing import blend_weights, mask_window
from defectfill.generators import Generator

NAME = "copy_paste"
CONFIG_NAME = "config.yaml"
BLENDS = ("contrast", "alpha", "poisson")
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


@dataclass(frozen=True)
class Fit:
    """How a reference defect's bounding box lands on the target: flips, k quarter turns (as
    `np.rot90`), the placed size (h, w) and top-left (y, x). A `Placement` has these fields."""

    flip_h: bool
    flip_v: bool
    k: int
    size: tuple[int, int]
    origin: tuple[int, int]


def box_fit(dst_box: tuple[int, int, int, int]) -> Fit:
    """No flips or turns: the reference box resized onto ``dst_box`` (y0, x0, h, w)."""
    return Fit(False, False, 0, (dst_box[2], dst_box[3]), (dst_box[0], dst_box[1]))


def fit_matrix(src_box: tuple[int, int, int, int], fit: Fit, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """2x3 affine from target pixel indices (minus ``offset`` (y, x)) to reference pixel indices,
    for ``cv2.warpAffine(..., WARP_INVERSE_MAP)``: crop to ``src_box``, flip, turn k times as
    `np.rot90`, scale to ``fit.size``, move to ``fit.origin``. Exact for integer moves."""
    y0, x0, h, w = src_box

    def t(dx, dy):
        return np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])

    forward = t(-x0, -y0)  # continuous coordinates: pixel i spans [i, i + 1)
    if fit.flip_h:
        forward = np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]) @ forward
    if fit.flip_v:
        forward = np.array([[1.0, 0, 0], [0, -1, h], [0, 0, 1]]) @ forward
    for _ in range(fit.k % 4):  # np.rot90: new[i, j] = old[j, W - 1 - i]
        forward = np.array([[0.0, 1, 0], [-1, 0, w], [0, 0, 1]]) @ forward
        h, w = w, h
    th, tw = fit.size
    forward = t(fit.origin[1] - offset[1], fit.origin[0] - offset[0]) @ np.diag([tw / w, th / h, 1.0]) @ forward
    index = t(-0.5, -0.5) @ forward @ t(0.5, 0.5)
    return np.linalg.inv(index)[:2]


def warp_fit(source: np.ndarray, src_box: tuple[int, int, int, int], fit: Fit, window: tuple[int, int, int, int],
             border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """``source`` (float32) resampled onto the target ``window`` (y0, x0, h, w) as `fit` places its
    box (bilinear): the reference defect with its real context around it."""
    matrix = fit_matrix(src_box, fit, offset=(window[0], window[1]))
    return cv2.warpAffine(source, matrix, (window[3], window[2]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=border)


def defect_signal(image: np.ndarray, mask: np.ndarray, grow_px: int = 2, radius: int = 5) -> np.ndarray:
    """The defect relative to its own fabric: ``image − fabric`` on ``mask`` (0 elsewhere), float32,
    where ``fabric`` is the uint8 ``image`` with the mask grown by ``grow_px`` px filled in by
    OpenCV's Telea inpainting (``radius`` px). Computed on the mask's box plus a margin."""
    by, bx, bh, bw = grow(bbox(mask), grow_px + 2 * radius + 2, mask.shape)
    sub = np.ascontiguousarray(image[by:by + bh, bx:bx + bw])
    sub_mask = mask[by:by + bh, bx:bx + bw]
    hole = sub_mask.astype(np.uint8)
    if grow_px:
        hole = cv2.dilate(hole, np.ones((2 * grow_px + 1,) * 2, np.uint8))
    fabric = cv2.inpaint(sub, hole, radius, cv2.INPAINT_TELEA).astype(np.float32)
    keep = sub_mask if image.ndim == 2 else sub_mask[..., None]
    signal = np.zeros(image.shape, np.float32)
    signal[by:by + bh, bx:bx + bw] = np.where(keep, sub.astype(np.float32) - fabric, 0.0)
    return signal


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
    """The reference image as uint8, HxW (luminance) for grayscale targets, else HxWx3 RGB."""
    return cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY) if grayscale else sample.image


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
    def from_init_args(cls, init_args: dict | None = None) -> "CopyPasteGenerator":
        """`config` (e.g. configs/gan/copy_paste.yaml) + CopyPasteConfig keys; nothing is trained."""
        from gan_baselines.harness import config_from_init_args

        return cls(config_from_init_args(CopyPasteConfig, init_args, NAME))

    def fit(self, dataset: ReferenceDataset | None, output_dir: str | os.PathLike, seed: int = 0) -> Path:
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
    check_writable(args.output_dir, "run folder")
    with output_errors(args.output_dir):
        print(f"copy_paste run folder: {generator.fit(None, args.output_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
