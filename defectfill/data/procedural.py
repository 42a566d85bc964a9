"""A small procedurally generated woven-fabric dataset, so demos run without real data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from defectfill.errors import DataError

DEFECT_KINDS = ("broken_yarn", "hole", "stain", "fuzzyball")
MANIFEST_COLUMNS = (
    "id", "defect_type", "fabric_type", "kind", "width", "height", "defect_pixels", "image_path", "mask_path"
)
_README = """Procedurally generated woven-fabric images (synthetic, not real photographs).
Written by defectfill.data.procedural.make_woven_dataset(seed={seed}) for demos and tests.
Layout: images/ + masks/ (0/255) defect pairs, good/ defect-free images, manifest.csv.
"""


def _threads(n: int, period: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel thread index, position across the thread (0..1) and per-thread brightness."""
    widths = period * rng.uniform(0.85, 1.15, int(n / period) + 2)
    edges = np.concatenate([[0.0], np.cumsum(widths)]) - rng.uniform(0, period)
    while edges[-1] < n:  # narrow draws can fall short of n; pad with nominal threads (no extra draws)
        widths = np.append(widths, period)
        edges = np.append(edges, edges[-1] + period)
    pos = np.arange(n) + 0.5
    idx = np.searchsorted(edges, pos) - 1
    u = (pos - edges[idx]) / widths[idx]
    return idx, u, rng.uniform(0.85, 1.15, len(widths))


def _woven_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Plain weave: warp (vertical) and weft (horizontal) threads alternate on top."""
    period = rng.uniform(6.0, 10.0)
    xi, xu, xb = _threads(width, period, rng)
    yi, yu, yb = _threads(height, period * rng.uniform(0.9, 1.1), rng)
    across_x, across_y = np.sin(np.pi * xu)[None, :], np.sin(np.pi * yu)[:, None]
    warp = xb[xi][None, :] * (0.55 + 0.45 * across_x) * (0.85 + 0.15 * across_y)
    weft = yb[yi][:, None] * (0.55 + 0.45 * across_y) * (0.85 + 0.15 * across_x)
    warp_on_top = (xi[None, :] + yi[:, None]) % 2 == 0
    tex = np.where(warp_on_top, warp, weft) + rng.normal(0, 0.04, (height, width))
    tex = ndimage.gaussian_filter(tex, 0.6)
    return rng.uniform(70, 110) + rng.uniform(80, 110) * tex  # float grey levels


def _blob(size: int, rng: np.random.Generator) -> np.ndarray:
    """Irregular bool blob in a size x size patch; the centre is always inside."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    ry, rx = size / 2 * rng.uniform(0.5, 1.0, 2)
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 8)
    noise /= np.abs(noise).max() + 1e-9
    return np.hypot(yy / ry, xx / rx) + 0.35 * noise < 1.0


def _paint_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Paint one defect of ``kind`` into ``img`` in place; return its bool mask."""
    h, w = img.shape
    shape = np.zeros((h, w), dtype=bool)
    if kind == "broken_yarn":
        thick, length = int(rng.integers(2, 4)), int(rng.integers(h // 4, h // 2 + 1))
        if rng.random() < 0.5:  # along the warp (vertical)
            y, x = int(rng.integers(0, h - length + 1)), int(rng.integers(0, w - thick + 1))
            shape[y : y + length, x : x + thick] = True
        else:  # along the weft (horizontal)
            length = min(length * 2, w)
            y, x = int(rng.integers(0, h - thick + 1)), int(rng.integers(0, w - length + 1))
            shape[y : y + thick, x : x + length] = True
        delta, soft = rng.choice([-1, 1]) * rng.uniform(45, 70), 0.7
    else:
        size = min(h, w, int(rng.integers(8, 14) if kind == "fuzzyball" else rng.integers(20, 81)))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        shape[y : y + size, x : x + size] = _blob(size, rng)
        delta, soft = {"hole": (-80, 1.0), "stain": (-35, 3.0), "fuzzyball": (70, 1.5)}[kind]
    alpha = ndimage.gaussian_filter(shape.astype(np.float64), soft)
    alpha = np.maximum(alpha, shape * 0.8)  # keep thin defects strong
    img += delta * alpha
    return alpha > 0.1


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L").save(path)


def make_woven_dataset(
    out_dir: str | Path,
    n_defect: int = 6,
    n_good: int = 4,
    height: int = 256,
    width: int = 1024,
    seed: int = 0,
    fabrics: int = 1,
) -> Path:
    """Write a procedural grayscale woven-fabric dataset to ``out_dir`` and return it.

    Layout matches :func:`load_reference_dataset` (images/, masks/, good/, manifest.csv,
    plus README.txt). Defect types cycle through :data:`DEFECT_KINDS`; the manifest's
    ``fabric_type`` cycles through ``woven_00`` .. ``woven_<fabrics-1>`` (defect and good images
    alike). Deterministic per seed.
    """
    if fabrics < 1:
        raise ValueError(f"fabrics must be >= 1, got {fabrics}")
    if min(height, width) < 32:
        raise ValueError(f"height and width must be >= 32, got {height}x{width}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: output folder exists and is not empty")
    for sub in ("images", "masks", "good"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_defect):
        rng = np.random.default_rng([seed, 0, i])
        kind, sid = DEFECT_KINDS[i % len(DEFECT_KINDS)], f"woven_{i:03d}"
        img = _woven_texture(height, width, rng)
        mask = _paint_defect(img, kind, rng)
        _save(img, out / "images" / f"{sid}.png")
        _save(mask * 255.0, out / "masks" / f"{sid}.png")
        rows.append(
            (sid, kind, f"woven_{i % fabrics:02d}", "defect", width, height, int(mask.sum()), f"images/{sid}.png",
             f"masks/{sid}.png")
        )
    for i in range(n_good):
        sid = f"woven_good_{i:03d}"
        _save(_woven_texture(height, width, np.random.default_rng([seed, 1, i])), out / "good" / f"{sid}.png")
        rows.append((sid, "good", f"woven_{i % fabrics:02d}", "good", width, height, 0, f"good/{sid}.png", ""))
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    (out / "README.txt").write_text(_README.format(seed=seed))
    return out
