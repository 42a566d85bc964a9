"""How a defect's pixels differ from the fabric around them: contrast and texture of the fill.

Real AITEX defects are dark or light threads, knots and holes that break the weave. A synthetic fill
that is too faint (low contrast) or too smooth (no texture) teaches a downstream model a cue real
defects do not have. These statistics compare a generator's fills with the real defects' own, per
sample, with no network (no learned features, so nothing is left to interpret).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RING_INNER = 2  # px between the mask and the ring (a fill's feathered edge is left out)
RING_OUTER = 6  # px: the ring ends this far from the mask
TEXTURE_SIGMA = 0.5  # Gaussian before the Laplacian (px)


def fill_statistics(image: np.ndarray, mask: np.ndarray, inner: int = RING_INNER,
                    outer: int = RING_OUTER) -> dict[str, float] | None:
    """Contrast and texture of ``mask``'s pixels against a ring of fabric around it.

    ``ring`` = pixels within ``outer`` px of the mask but farther than ``inner`` px (binary dilations).
    ``contrast`` = mean grey in the mask minus mean grey in the ring (grey levels, signed).
    ``texture_ratio`` = std of the Laplacian of Gaussian (sigma ``TEXTURE_SIGMA``) in the mask over its
    std in the ring: 1 when the fill carries the weave's fine structure, towards 0 when it is smooth.
    None when the mask or the ring is empty. ``image`` is grey (H, W) or RGB (its channel mean is used).
    """
    grey = np.asarray(image, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    mask = np.asarray(mask, dtype=bool)
    if grey.shape != mask.shape:
        raise ValueError(f"image {grey.shape} and mask {mask.shape} differ in size")
    ring = ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)
    if not mask.any() or not ring.any():
        return None
    log = ndimage.laplace(ndimage.gaussian_filter(grey, TEXTURE_SIGMA))
    texture_in, texture_ring = float(log[mask].std()), float(log[ring].std())
    return {"contrast": float(grey[mask].mean() - grey[ring].mean()), "texture_in": texture_in,
            "texture_ring": texture_ring, "texture_ratio": texture_in / texture_ring if texture_ring > 0 else float("nan")}


def summarize_fills(rows: list[dict]) -> dict:
    """Median |contrast| and texture ratio (with 10th/90th percentiles) over ``fill_statistics`` rows."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return {"n": 0}
    contrast = np.abs([r["contrast"] for r in rows])
    ratio = np.array([r["texture_ratio"] for r in rows])
    ratio = ratio[np.isfinite(ratio)]

    def q(values, p):
        return round(float(np.percentile(values, p)), 3) if len(values) else None

    return {"n": len(rows), "abs_contrast_median": q(contrast, 50), "abs_contrast_p10_p90": [q(contrast, 10), q(contrast, 90)],
            "texture_ratio_median": q(ratio, 50), "texture_ratio_p10_p90": [q(ratio, 10), q(ratio, 90)]}
