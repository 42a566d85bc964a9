"""The one image and mask reader.

Every bit depth is read at its true value: 8-bit files as they are, 16-bit files (common from
line-scan cameras: PIL modes ``I;16*``, or ``I`` holding 16-bit values) scaled to 0..255 by
``v * 255 / 65535``, float files (``F``) taken as 0..1 when their maximum is at most 1, else as
0..255. Masks are thresholded on that same 0..255 scale, so ``threshold=128`` means "at least half
of the file's range" for every bit depth. Any unreadable, truncated or corrupt file raises
:class:`DataError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from defectfill.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """The fully decoded PIL image of ``path`` (a truncated file fails here, not later)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except Exception as err:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError...)
        raise DataError(f"{path}: cannot read {what} ({_one_line(err)})") from err


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(height, width) from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as err:
        raise DataError(f"{path}: cannot read {what} ({_one_line(err)})") from err


def is_grey(im: Image.Image) -> bool:
    return im.mode in GREY_MODES


def levels(im: Image.Image) -> np.ndarray:
    """Pixel values on the 0..255 scale, as float64: HxW for grey modes, HxWxC otherwise
    (C = 2 for LA, 3 for RGB, 4 for RGBA; palette images are expanded)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode not in ("1", "L", "LA", "RGB", "RGBA", "F") and not im.mode.startswith("I"):
        im = im.convert("RGB")  # CMYK, YCbCr, HSV, LAB...
    if im.mode == "1":
        return np.asarray(im, dtype=np.float64) * 255.0
    a = np.asarray(im)
    if im.mode.startswith("I"):
        a = a.astype(np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:  # 16-bit values in a 32-bit mode
            a = a * (255.0 / 65535.0)
        return np.clip(a, 0, 255)
    if im.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.nan_to_num(a), 0, 255)
    return a.astype(np.float64)


def to_uint8(im: Image.Image, mode: str = "auto") -> np.ndarray:
    """uint8 pixels of a PIL image at any bit depth: ``mode`` ``"L"`` (HxW), ``"RGB"`` (HxWx3) or
    ``"auto"`` (HxW for grey sources, HxWx3 otherwise). Alpha is dropped."""
    if mode not in ("auto", "L", "RGB"):
        raise ValueError(f"mode must be auto, L or RGB, got {mode!r}")
    if im.mode in ("L", "RGB") and (mode == "auto" or mode == im.mode):
        return np.asarray(im)
    a = levels(im)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[2] == 2 else a[..., :3]
    grey_source = a.ndim == 2
    if mode == "L" and not grey_source:
        a = a @ _LUMA
    a = np.rint(a).clip(0, 255).astype(np.uint8)
    if mode == "RGB" and a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def read_image(path: str | os.PathLike, mode: str = "auto") -> np.ndarray:
    """uint8 pixels of an image file (see :func:`to_uint8`); DataError naming the file."""
    return to_uint8(open_image(path), mode)


def mask_levels(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A mask's grey level, float HxW on 0..255: luminance for colour, an alpha channel composites
    grey over black (``v = grey * alpha / 255``). uint16 arrays are scaled like 16-bit files."""
    if isinstance(mask, Image.Image):
        a = levels(mask)
    else:
        a = np.asarray(mask)
        if a.dtype == bool:
            return a.astype(np.float64) * 255.0
        scale = 255.0 / 65535.0 if a.dtype == np.uint16 else 1.0
        a = a.astype(np.float64) * scale
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return a
    if a.ndim != 3 or a.shape[2] not in (2, 3, 4):
        raise ValueError(f"mask array must be HxW or HxWx{{2,3,4}}, got shape {a.shape}")
    grey = a[..., 0] if a.shape[2] == 2 else np.rint(a[..., :3] @ _LUMA)  # grey levels, as PIL
    if a.shape[2] in (2, 4):
        grey = grey * a[..., -1] / 255.0
    return grey


def read_mask(path: str | os.PathLike, threshold: float = 128) -> np.ndarray:
    """Bool HxW mask of a mask file: level (0..255 scale, any bit depth) ``>= threshold``."""
    return mask_levels(open_image(path, "mask")) >= threshold
