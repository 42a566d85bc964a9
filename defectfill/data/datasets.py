"""Reference defect data: a validated folder loader and a deterministic defect-crop sampler.

A dataset folder holds ``images/`` and ``masks/`` (same file stem), an optional ``good/``
folder of defect-free images and an optional ``manifest.csv`` with ``id`` and
``defect_type`` columns.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from defectfill.data.masks import binarize_mask
from defectfill.errors import DataError
from defectfill.formats.images import IMAGE_EXTS, is_grey, open_image, read_image, to_uint8


@dataclass
class ReferenceSample:
    """One defect image with its mask."""

    id: str
    image: np.ndarray  # uint8 HxWx3 (grayscale replicated)
    mask: np.ndarray  # bool HxW
    defect_type: str
    image_path: Path
    mask_path: Path
    fabric_type: str | None = None  # manifest's fabric_type column, when it has one


@dataclass
class ReferenceDataset:
    """Validated reference samples, sorted by id."""

    root: Path
    samples: list[ReferenceSample]
    good_paths: list[Path]
    grayscale: bool  # all source images were single-channel
    fabric_types: dict[str, str] = field(default_factory=dict)  # id (defect or good) -> manifest fabric_type

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect_type for s in self.samples})

    def __len__(self) -> int:
        return len(self.samples)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _list_images(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for the image files in ``folder``."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTS:
            continue
        if path.stem in files:
            raise DataError(f"{path}: duplicate id '{path.stem}' (also {files[path.stem].name})")
        files[path.stem] = path
    return files


def _read_manifest(path: Path) -> dict[str, dict]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("id", "defect_type") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
            return {row["id"]: row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read manifest ({_one_line(err)})") from err


def _read_pair(image_path: Path, mask_path: Path, mask_threshold: int):
    """(PIL image, bool mask) of one reference defect; DataError naming the file on a bad pair."""
    img, msk = open_image(image_path), open_image(mask_path, "mask")
    if img.size != msk.size:
        raise DataError(
            f"{mask_path}: mask size {msk.size[0]}x{msk.size[1]} does not match "
            f"image {image_path.name} size {img.size[0]}x{img.size[1]}"
        )
    mask = binarize_mask(msk, mask_threshold)
    if not mask.any():
        raise DataError(f"{mask_path}: mask is empty (no pixel >= threshold {mask_threshold})")
    if mask.all():
        raise DataError(f"{mask_path}: mask covers the whole image (every pixel >= threshold {mask_threshold}); "
                        f"a reference defect needs defect-free surroundings: check the mask or mask_threshold")
    return img, mask


def load_reference_sample(root: str | Path, sample_id: str, mask_threshold: int = 128) -> ReferenceSample:
    """One defect of a reference dataset by id (image and mask read as :func:`load_reference_dataset`
    reads them), without decoding the rest of the folder. DataError when the id has no image/mask."""
    root = Path(root)
    paths = []
    for folder in (root / "images", root / "masks"):
        found = _list_images(folder).get(sample_id) if folder.is_dir() else None
        if found is None:
            raise DataError(f"{folder}: no file for id '{sample_id}'")
        paths.append(found)
    img, mask = _read_pair(*paths, mask_threshold)
    manifest = root / "manifest.csv"
    row = _read_manifest(manifest).get(sample_id, {}) if manifest.exists() else {}
    return ReferenceSample(sample_id, to_uint8(img, "RGB"), mask, row.get("defect_type", "defect"), *paths,
                           row.get("fabric_type") or None)


def load_reference_dataset(
    root: str | Path,
    mask_threshold: int = 128,
    defect_types: Sequence[str] | None = None,
    max_samples: int | None = None,
) -> ReferenceDataset:
    """Load and validate every image/mask pair under ``root``.

    Masks are converted to grey (luminance for colour, ``L*A/255`` for LA) on the 0..255 scale
    (16-bit files scaled, see ``defectfill.formats.images``) and a pixel is defect when its value
    is ``>= mask_threshold``. Images become uint8 RGB at any bit depth. Every file (``good/``
    included) is fully decoded, so a truncated one fails here.
    ``defect_types`` keeps only those types; ``max_samples`` keeps the first N by id.
    Raises :class:`DataError` (one line naming the file) on any problem.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder {'is not a directory' if root.exists() else 'not found'}")
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder missing (a dataset needs images/ and masks/)")
    images, masks = _list_images(images_dir), _list_images(masks_dir)
    if not images:
        raise DataError(f"{images_dir}: no images ({'/'.join(IMAGE_EXTS)})")
    for stem, path in images.items():
        if stem not in masks:
            expected = masks_dir / f"{stem}.png"
            raise DataError(f"{path}: no mask (expected {expected} or another image extension)")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"{path}: mask has no matching image in {images_dir}")

    manifest_path = root / "manifest.csv"
    types = dict.fromkeys(images, "defect")
    fabrics: dict[str, str] = {}
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        for stem in images:
            if stem not in manifest:
                raise DataError(f"{manifest_path}: no row for id '{stem}' ({images[stem]})")
            types[stem] = manifest[stem]["defect_type"]
        fabrics = {i: row["fabric_type"] for i, row in manifest.items() if row.get("fabric_type")}
        good_ids = set(_list_images(root / "good")) if (root / "good").is_dir() else set()
        orphans = sorted(set(manifest) - set(images) - good_ids)
        if orphans:
            shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
            raise DataError(f"{manifest_path}: {len(orphans)} row(s) name no image in {images_dir.name}/ or good/: "
                            f"{shown} (add the images or drop the rows; defect_types / max_samples select a subset)")

    samples, grayscale = [], True
    for stem in sorted(images):
        image_path, mask_path = images[stem], masks[stem]
        img, mask = _read_pair(image_path, mask_path, mask_threshold)
        grayscale &= is_grey(img)
        image = to_uint8(img, "RGB")
        samples.append(ReferenceSample(stem, image, mask, types[stem], image_path, mask_path, fabrics.get(stem)))

    if defect_types is not None:
        wanted = {defect_types} if isinstance(defect_types, str) else set(defect_types)
        samples = [s for s in samples if s.defect_type in wanted]
        if not samples:
            available = ", ".join(sorted(set(types.values())))
            raise DataError(
                f"{root}: defect_types {sorted(wanted)} select no samples (available: {available})"
            )
    if max_samples is not None:
        samples = samples[:max_samples]

    good_dir = root / "good"
    good_paths = sorted(_list_images(good_dir).values()) if good_dir.is_dir() else []
    for path in good_paths:  # decoded lazily later: a truncated file must fail here, not mid-run
        open_image(path)
    return ReferenceDataset(root, samples, good_paths, grayscale, fabrics)


def sample_defect_crop(
    image: np.ndarray,
    mask: np.ndarray,
    crop_size: int,
    resolution: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Random ``crop_size`` square window containing a random defect pixel, resized.

    Axes shorter than ``crop_size`` are reflection-padded first. The image is resized
    bicubically; the mask by area averaging, keeping any covered pixel, so thin defects
    survive. Returns uint8 (R, R, 3) and a non-empty bool (R, R) mask.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    if not mask.any():
        raise ValueError("mask is empty")
    pad = [((crop_size - n) // 2, crop_size - n - (crop_size - n) // 2) if n < crop_size else (0, 0)
           for n in mask.shape]
    if any(p != (0, 0) for p in pad):
        image = np.pad(image, pad + [(0, 0)] * (image.ndim - 2), mode="reflect")
        mask = np.pad(mask, pad, mode="reflect")
    h, w = mask.shape
    y, x = np.unravel_index(rng.choice(np.flatnonzero(mask)), mask.shape)
    y0 = int(rng.integers(max(0, y - crop_size + 1), min(y, h - crop_size) + 1))
    x0 = int(rng.integers(max(0, x - crop_size + 1), min(x, w - crop_size) + 1))
    img_crop = image[y0 : y0 + crop_size, x0 : x0 + crop_size]
    mask_crop = mask[y0 : y0 + crop_size, x0 : x0 + crop_size]

    size = (resolution, resolution)
    out_img = np.asarray(Image.fromarray(img_crop).resize(size, Image.BICUBIC), dtype=np.uint8)
    out_mask = np.asarray(Image.fromarray(mask_crop.astype(np.float32), "F").resize(size, Image.BOX)) > 0
    if not out_mask.any():  # safety net; area resizing keeps any covered pixel
        out_mask[(y - y0) * resolution // crop_size, (x - x0) * resolution // crop_size] = True
    return out_img, out_mask


def random_flips(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hflip: bool = True,
                 vflip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Flip image and mask together, each axis with probability 1/2. Both coins are always
    drawn, so turning a flip off does not shift the rest of the random stream."""
    return apply_flips(image, mask, *draw_flips(rng, hflip, vflip))


def apply_flips(image: np.ndarray, mask: np.ndarray, flip_h: bool, flip_v: bool) -> tuple[np.ndarray, np.ndarray]:
    if flip_h:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if flip_v:
        image, mask = image[::-1], mask[::-1]
    return image, mask


def draw_flips(rng: np.random.Generator, hflip: bool = True, vflip: bool = True) -> tuple[bool, bool]:
    """(flip horizontally, flip vertically) for `random_flips`; both coins are drawn either way."""
    flip_h, flip_v = rng.random(2) < 0.5
    return bool(hflip and flip_h), bool(vflip and flip_v)


class DefectCropSampler:
    """Stateless, deterministic batches of defect crops for training.

    A batch depends only on (seed, step, process_index, batch_size), so training
    resumes exactly and each process draws different crops.
    """

    def __init__(
        self,
        dataset: ReferenceDataset,
        crop_size: int,
        resolution: int,
        seed: int,
        hflip: bool = True,
        vflip: bool = True,
    ) -> None:
        if len(dataset) == 0:
            raise DataError(f"{dataset.root}: no reference samples to sample from")
        self.dataset = dataset
        self.crop_size = crop_size
        self.resolution = resolution
        self.seed = seed
        self.hflip = hflip
        self.vflip = vflip
        # Every reference image fits in one crop: a crop is then fixed by (sample, flips), so there are
        # at most 4 distinct crops per sample and their VAE latents can be cached.
        self.whole_image_crops = all(max(s.image.shape[:2]) <= crop_size for s in dataset.samples)

    def batch(self, step: int, process_index: int, batch_size: int) -> dict:
        """``pixel_values`` (B,3,R,R) in [-1,1], ``masks`` (B,1,R,R) in {0,1}, ``ids``, and ``keys``:
        (sample index, hflip, vflip) per crop when `whole_image_crops` (the crop is a function of
        its key), else None."""
        rng = np.random.default_rng([self.seed, step, process_index])
        samples = self.dataset.samples
        images, masks, ids, keys = [], [], [], []
        for i in rng.integers(len(samples), size=batch_size):
            sample = samples[i]
            img, msk = sample_defect_crop(sample.image, sample.mask, self.crop_size, self.resolution, rng)
            flip_h, flip_v = draw_flips(rng, self.hflip, self.vflip)
            img, msk = apply_flips(img, msk, flip_h, flip_v)
            images.append(img)
            masks.append(msk)
            ids.append(sample.id)
            keys.append((int(i), flip_h, flip_v))
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        mask_t = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        return {"pixel_values": pixels.contiguous(), "masks": mask_t, "ids": ids,
                "keys": keys if self.whole_image_crops else None}


class CleanCropSampler:
    """Stateless random crops of defect-free images (the `good/` folder), like DefectCropSampler.

    Images are decoded once, lazily, and kept in memory as uint8 RGB. Crops that are mostly
    saturated (> `max_blank` of pixels at 0 or 255: off-fabric columns of line scans) are redrawn
    up to 8 times.
    """

    def __init__(self, good_paths: list[Path], crop_size: int, resolution: int, seed: int,
                 max_blank: float = 0.5) -> None:
        if not good_paths:
            raise DataError("no defect-free (good/) images to sample clean crops from")
        self.paths = list(good_paths)
        self.crop_size, self.resolution, self.seed, self.max_blank = crop_size, resolution, seed, max_blank
        self._cache: dict[int, np.ndarray] = {}

    def _image(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = read_image(self.paths[i], "RGB")
        return self._cache[i]

    def batch(self, step: int, process_index: int, batch_size: int) -> torch.Tensor:
        """(B,3,R,R) in [-1,1]; depends only on (seed, step, process_index, batch_size)."""
        rng = np.random.default_rng([self.seed, step, process_index, 1])
        out = []
        for _ in range(batch_size):
            for _attempt in range(8):
                img = self._image(int(rng.integers(len(self.paths))))
                h, w = img.shape[:2]
                ch, cw = min(self.crop_size, h), min(self.crop_size, w)
                y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
                crop = img[y0:y0 + ch, x0:x0 + cw]
                if np.mean((crop == 0) | (crop == 255)) <= self.max_blank:
                    break
            out.append(np.asarray(Image.fromarray(crop).resize((self.resolution,) * 2, Image.BICUBIC)))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
