"""Low-Fidelity Selection (DefectFill, Song et al., CVPR 2025, Sec. 3.3).

DefectFill inpaints K candidates for one (clean image, mask) pair and keeps the one that is
*least* like the clean image inside the mask: the candidate whose defect is the most visible.
The measures live in `defectfill.metrics.distances`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from defectfill.metrics.distances import DEFAULT_MEASURE, masked_distance


def low_fidelity_selection(
    candidates: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    measure: str = DEFAULT_MEASURE,
    lpips_model: Callable[..., torch.Tensor] | None = None,
) -> tuple[int, list[float]]:
    """Low-Fidelity Selection (DefectFill Sec. 3.3): pick the candidate least like the clean image.

    Scores the K candidates with :func:`masked_distance` inside the mask (default: the
    LPIPS-style distance on the pretrained EfficientNet-Lite0, ``measure="lpips-lite0"`` with
    ``lpips_model`` from :func:`load_perceptual`) and returns ``(index of the highest score,
    all K scores)``. Ties go to the lowest index.
    """
    scores = masked_distance(candidates, clean, mask, measure, lpips_model)
    values = [float(s) for s in scores]
    if any(v != v for v in values):  # NaN
        raise ValueError(f"measure {measure!r} gave NaN scores: {values}")
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    return best, values
