"""LPIPS-style perceptual distance on the pretrained EfficientNet-Lite0 backbone, offline.

Zhang, Isola, Efros, Shechtman and Wang, CVPR 2018 ("The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric"), eq. 1:

    d(x, x0) = sum_l 1 / (H_l W_l) sum_{h, w} || w_l * (y^l_hw - y0^l_hw) ||_2^2

where ``y^l`` are the layer-``l`` features of a fixed network, unit-normalised along the channel
dimension, and ``w_l`` per-channel weights. The lpips package's learned ``w_l`` ("lin" layers)
calibrate AlexNet / VGG / SqueezeNet channels and mean nothing for another network, so here
``w_l = 1`` (the paper's un-calibrated deep-feature distance) on the toolkit's one pretrained
backbone, ImageNet EfficientNet-Lite0 (:class:`defectfill.backbones.Backbone`), at its five
feature levels (strides 2, 4, 8, 16, 32) by default.

:class:`BackbonePerceptual` has the calling convention of ``lpips.LPIPS(spatial=True)``:
``model(x, y, normalize=True)`` -> a per-pixel map (B, 1, H, W) (each layer's map bilinearly
upsampled to the input size, as lpips does, then summed over layers), so averaging it over a
mask gives eq. 1 restricted to the mask, and it plugs into Low-Fidelity Selection
(:func:`defectfill.metrics.distances.masked_lpips_distance`) and IC-LPIPS
(:func:`defectfill.metrics.ic_lpips`) unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectfill.backbones import Backbone

MEASURE_NAME = "lpips-lite0"
NORM_EPS = 1e-10  # lpips.normalize_tensor's epsilon


def unit_normalize(features: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Features (B, C, h, w) divided by their L2 norm over channels at every position (eq. 1's y^l).

    ``eps`` keeps all-zero feature vectors at zero (as lpips' ``normalize_tensor``).
    """
    norm = features.square().sum(dim=1, keepdim=True).sqrt()
    return features / (norm + eps)


def layer_distance_map(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """One layer's term of eq. 1 per position, with w_l = 1: sum_c (y^l - y0^l)^2, (B, 1, h, w).

    ``fx``, ``fy``: raw features (B, C, h, w) (``fy`` may have batch 1: it is broadcast); each
    is unit-normalised over channels first, so every value lies in [0, 4].
    """
    if fx.ndim != 4 or fy.ndim != 4 or fx.shape[1:] != fy.shape[1:]:
        raise ValueError(f"feature maps must be (B, C, h, w) of one shape, got {tuple(fx.shape)} and "
                         f"{tuple(fy.shape)}")
    return (unit_normalize(fx) - unit_normalize(fy)).square().sum(dim=1, keepdim=True)


class BackbonePerceptual(nn.Module):
    """LPIPS-style distance (Zhang et al. 2018 eq. 1, w_l = 1) on EfficientNet-Lite0 features, spatial.

    ``forward(x, y, normalize=True)``: images (B, 1 or 3, H, W), in [0, 1] with ``normalize=True``
    (in [-1, 1] with ``normalize=False``, the lpips convention); ``y`` may hold one image, compared
    with every ``x`` (its features are computed once). Returns (B, 1, H, W): the sum over the
    chosen ``levels`` of each layer's :func:`layer_distance_map`, bilinearly upsampled to H x W.
    Its mean over all pixels is eq. 1 up to the upsampling's border weighting; its mean over a
    mask is eq. 1 restricted to the mask. 0 for identical images.

    ``pretrained=False`` gives the seeded RANDOM backbone (an explicit option; ``description``
    says so). Frozen: eval mode, gradients off.
    """

    spatial = True  # a per-pixel map, as lpips.LPIPS(spatial=True)

    def __init__(self, pretrained: bool = True, levels: tuple[int, ...] = (0, 1, 2, 3, 4), seed: int = 0,
                 weights: str | Path | None = None):
        super().__init__()
        self.backbone = Backbone(pretrained=pretrained, levels=tuple(levels), frozen=True, seed=seed,
                                 weights=weights)
        self.levels = self.backbone.levels
        strides = ", ".join(str(r) for r in self.backbone.reductions)
        self.description = (f"{MEASURE_NAME}: LPIPS-style distance (Zhang et al. 2018 eq. 1, unit weights w_l = 1) "
                            f"on {self.backbone.name} features at strides {strides}")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> BackbonePerceptual:
        """Always in eval mode: the backbone is frozen."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, in0: torch.Tensor, in1: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if in0.ndim != 4 or in1.ndim != 4 or in0.shape[1:] != in1.shape[1:]:
            raise ValueError(f"images must be (B, C, H, W) of one size, got {tuple(in0.shape)} and "
                             f"{tuple(in1.shape)}")
        if in1.shape[0] not in (1, in0.shape[0]):
            raise ValueError(f"second batch must hold 1 or {in0.shape[0]} images, got {in1.shape[0]}")
        if not normalize:  # lpips convention: [-1, 1] inputs unless normalize=True
            in0, in1 = (in0 + 1) / 2, (in1 + 1) / 2
        n = in0.shape[0]
        feats = self.backbone(torch.cat([in0, in1]).float())
        size = in0.shape[-2:]
        total = torch.zeros(n, 1, *size, dtype=torch.float32, device=in0.device)
        for f in feats:
            layer = layer_distance_map(f[:n], f[n:])
            total += F.interpolate(layer, size=size, mode="bilinear", align_corners=False)
        return total
