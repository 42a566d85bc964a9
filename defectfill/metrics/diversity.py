"""Diversity of generated defects: IC-LPIPS restricted to the defect masks.

IC-LPIPS (intra-cluster LPIPS) — Ojha et al., CVPR 2021, "Few-shot Image Generation via
Cross-domain Correspondence", Sec. 4: each generated image is assigned to the nearest (by
LPIPS) of the k real training images; the LPIPS distances between pairs of generated images
of a cluster are averaged, and these per-cluster averages are averaged over clusters. A
generator that copies its k training images scores ~0; more varied outputs score higher.

Defect variant used here: every LPIPS distance is a spatial LPIPS map averaged over the UNION of
the two images' defect masks (both the generated-to-real distances of the assignment and the
generated-to-generated distances within a cluster), so the clean fabric around a defect does
not dominate and the distance stays symmetric. Without masks the whole image is used. Clusters
with fewer than 2 members are skipped and counted. The map comes from
:func:`defectfill.metrics.distances.load_perceptual`: by default the LPIPS-style distance on the
pretrained EfficientNet-Lite0 (:class:`~defectfill.metrics.perceptual.BackbonePerceptual`,
Zhang et al. 2018 eq. 1 with unit weights), or ``lpips.LPIPS(spatial=True)`` (the standard LPIPS
with local AlexNet weights; a RANDOM backbone only when asked for). The result carries the
network's description, so a random backbone is never passed off as the standard LPIPS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

METRIC_NAME = "IC-LPIPS (Ojha et al., CVPR 2021), masked to the defect"
REGION_UNION = "union of the two defect masks"
REGION_FULL = "full image"


# ---------------------------------------------------------------------------- inputs


def images_to_float(images: Sequence[np.ndarray] | np.ndarray, name: str = "images") -> torch.Tensor:
    """uint8 (N, H, W) grey or (N, H, W, 3) RGB (or a list of them) -> float32 (N, 3, H, W) in [0, 1]."""
    a = np.stack([np.asarray(x) for x in images]) if not isinstance(images, np.ndarray) else images
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[3] != 3):
        raise ValueError(f"{name} must be uint8 (N, H, W) or (N, H, W, 3), got {a.dtype} {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).float() / 255.0
    return t[:, None].expand(-1, 3, -1, -1) if t.ndim == 3 else t.permute(0, 3, 1, 2)


def masks_to_float(masks: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """Bool-like masks (N, H, W) matching ``shape`` (N, H, W) -> float32 {0, 1} (N, 1, H, W); none empty."""
    m = np.stack([np.asarray(x) for x in masks]) if not isinstance(masks, np.ndarray) else masks
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (one mask per image), got {m.shape}")
    m = torch.from_numpy(np.ascontiguousarray(m.astype(bool))).float()[:, None]
    empty = torch.nonzero(m.flatten(1).sum(1) == 0).flatten().tolist()
    if empty:
        raise ValueError(f"{name}: mask(s) {empty[:10]} are empty")
    return m


# ---------------------------------------------------------------------------- distances


def region_mean(distance_maps: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-pair mean of (B, 1, h, w) maps over (B, 1, H, W) {0, 1} weights (area-resampled to h x w), (B,)."""
    if weights is None:
        return distance_maps.mean(dim=(1, 2, 3))
    weights = weights.to(distance_maps)
    if weights.shape[-2:] != distance_maps.shape[-2:]:
        weights = F.interpolate(weights, size=distance_maps.shape[-2:], mode="area")
    total = weights.sum(dim=(1, 2, 3))
    if (total <= 0).any():
        raise ValueError("a mask covers no cell of the LPIPS distance map")
    return (distance_maps * weights).sum(dim=(1, 2, 3)) / total


@torch.no_grad()
def masked_lpips_pairs(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    pairs: np.ndarray,
    x_masks: torch.Tensor | None = None,
    y_masks: torch.Tensor | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """LPIPS between ``x[i]`` and ``y[j]`` for each row ``(i, j)`` of ``pairs``, over the union of their masks.

    ``x``, ``y``: float (N, 3, H, W) in [0, 1]; masks float (N, 1, H, W) or both None (whole
    image). ``model`` is a spatial LPIPS(-style) network (``load_perceptual`` / ``load_lpips``)
    called as ``model(a, b, normalize=True)`` -> (B, 1, h, w). Returns float64 (P,).
    """
    if getattr(model, "spatial", True) is False:
        raise ValueError("the LPIPS model must be built with spatial=True (a per-pixel map is needed)")
    if (x_masks is None) != (y_masks is None):
        raise ValueError("give masks for both sides or for neither")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    out = []
    for s in range(0, len(pairs), batch_size):
        i, j = torch.from_numpy(pairs[s:s + batch_size, 0]), torch.from_numpy(pairs[s:s + batch_size, 1])
        maps = model(x[i].to(device), y[j].to(device), normalize=True)
        if maps.ndim != 4 or maps.shape[:2] != (len(i), 1):
            raise ValueError(f"LPIPS model returned shape {tuple(maps.shape)}, expected ({len(i)}, 1, h, w)")
        union = None if x_masks is None else torch.maximum(x_masks[i], y_masks[j]).to(device)
        out.append(region_mean(maps.float(), union).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def assign_to_nearest(distances: np.ndarray) -> np.ndarray:
    """Cluster index of each generated image: argmin over its (n_gen, k) distances (ties: lowest index)."""
    return np.asarray(distances).argmin(axis=1)


def within_cluster_pairs(members: np.ndarray, max_pairs: int | None, rng: np.random.Generator) -> np.ndarray:
    """All unordered pairs ``(a, b)``, a < b, of ``members``; a seeded random ``max_pairs`` of them if capped."""
    members = np.asarray(members)
    a, b = np.triu_indices(len(members), k=1)
    pairs = np.stack([members[a], members[b]], axis=1)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), size=max_pairs, replace=False))]
    return pairs


# ---------------------------------------------------------------------------- IC-LPIPS


def ic_lpips(
    generated: Sequence[np.ndarray] | np.ndarray,
    real: Sequence[np.ndarray] | np.ndarray,
    lpips_model: Callable[..., torch.Tensor],
    lpips_description: str,
    generated_masks: Sequence[np.ndarray] | np.ndarray | None = None,
    real_masks: Sequence[np.ndarray] | np.ndarray | None = None,
    max_pairs_per_cluster: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> dict:
    """IC-LPIPS (Ojha et al., CVPR 2021) of generated defect crops against the k real training crops.

    ``generated`` (n) and ``real`` (k) are uint8 crops of one size ((N, H, W) grey or (N, H, W, 3)),
    e.g. from :func:`~defectfill.metrics.distribution.load_dataset_crops`; with masks (bool
    (N, H, W), both or neither) every distance is the spatial LPIPS averaged over the UNION of the
    two masks. Each generated crop joins the cluster of its nearest real crop; the mean pairwise
    distance within each cluster of >= 2 members is averaged over those clusters.
    ``max_pairs_per_cluster`` caps the pairs per cluster (seeded random subset) for large n.

    ``lpips_model``/``lpips_description`` are what :func:`defectfill.metrics.distances.load_perceptual`
    (or ``load_lpips``) returns; the description is reported so the network is visible. Returns ``{value,
    clusters_used, clusters_skipped, cluster_sizes, cluster_values, k, n_generated, region, lpips,
    metric}``; ``value`` is NaN when no cluster has 2 members.
    """
    if not isinstance(lpips_description, str) or not lpips_description:
        raise ValueError("lpips_description is required (the string load_perceptual returns with the model)")
    if max_pairs_per_cluster is not None and max_pairs_per_cluster < 1:
        raise ValueError(f"max_pairs_per_cluster must be >= 1 or None, got {max_pairs_per_cluster}")
    gen, ref = images_to_float(generated, "generated"), images_to_float(real, "real")
    if gen.shape[0] == 0 or ref.shape[0] == 0:
        raise ValueError(f"need generated and real crops, got {gen.shape[0]} generated and {ref.shape[0]} real")
    if gen.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f"generated crops {tuple(gen.shape[-2:])} and real crops {tuple(ref.shape[-2:])} differ "
                         "in size (crop both with the same size)")
    if (generated_masks is None) != (real_masks is None):
        raise ValueError("give both generated_masks and real_masks, or neither")
    gm = rm = None
    if generated_masks is not None:
        gm = masks_to_float(generated_masks, (gen.shape[0], *gen.shape[-2:]), "generated_masks")
        rm = masks_to_float(real_masks, (ref.shape[0], *ref.shape[-2:]), "real_masks")
    n, k = gen.shape[0], ref.shape[0]

    to_real = np.stack(np.meshgrid(np.arange(n), np.arange(k), indexing="ij"), axis=-1).reshape(-1, 2)
    dist = masked_lpips_pairs(lpips_model, gen, ref, to_real, gm, rm, batch_size).reshape(n, k)
    labels = assign_to_nearest(dist)

    rng = np.random.default_rng(seed)
    sizes, values = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        sizes.append(len(members))
        if len(members) < 2:
            values.append(None)
            continue
        pairs = within_cluster_pairs(members, max_pairs_per_cluster, rng)
        values.append(float(masked_lpips_pairs(lpips_model, gen, gen, pairs, gm, gm, batch_size).mean()))
    used = [v for v in values if v is not None]
    return {
        "value": float(np.mean(used)) if used else math.nan,
        "clusters_used": len(used),
        "clusters_skipped": k - len(used),
        "cluster_sizes": sizes,
        "cluster_values": values,
        "k": k,
        "n_generated": n,
        "region": REGION_FULL if gm is None else REGION_UNION,
        "lpips": lpips_description,
        "metric": METRIC_NAME,
    }
