"""DGT building blocks (Defect Generation and Transfer, "Open-Set Fabric Defect Detection With
Defect Generation and Transfer", IEEE TIM 2025): the foreground/background codes, stochastic
Gaussian smoothing, the self-supervised "defect-free" input, the region L1 losses, a small
skip-connected encoder-decoder generator and a PatchGAN discriminator.

Tensor conventions: images (B, C, H, W) in [-1, 1]; masks (B, 1, H, W) in {0, 1}; class labels
(B,) integer indices into the dataset's sorted defect types. Everything here is a pure function
or a plain `nn.Module`; randomness only comes from the `torch.Generator` passed in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FILLS = ("telea", "mean")


# ---- codes ----

def foreground_code(mask: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground code F = per-class label map ⊙ mask: (B, K, H, W), the mask in the channel of
    the sample's class and zeros in the other K − 1 channels."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class labels must lie in [0, {num_classes}), got {labels.tolist()}")
    onehot = F.one_hot(labels.long(), num_classes).to(mask.dtype)
    return onehot[:, :, None, None] * mask


def background_code(mask: torch.Tensor) -> torch.Tensor:
    """Background code B = ones ⊙ (1 − mask): (B, 1, H, W)."""
    return torch.ones_like(mask) * (1 - mask)


def gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels (N, 2·radius + 1), one per sigma; sigma 0 gives the
    discrete delta (the identity filter)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigmas.float().clamp_min(1e-6)[:, None]
    k = torch.exp(-(x[None] ** 2) / (2 * s**2))
    return k / k.sum(dim=1, keepdim=True)


def blur_matrices(sigmas: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n, n) matrices M with (M @ v) = 1-D Gaussian blur of a length-n signal v with
    edge-replicated borders (the taps that fall outside are added onto the edge samples)."""
    radius = min(max(0, math.ceil(3 * float(sigmas.max()))), 4 * n)
    k = gaussian_kernels(sigmas, radius)  # (N, L)
    rows = torch.arange(n)[:, None]
    cols = (rows + torch.arange(-radius, radius + 1)[None]).clamp(0, n - 1)  # (n, L)
    m = torch.zeros(len(sigmas), n, n)
    return m.scatter_add_(2, cols.expand(len(sigmas), -1, -1), k[:, None, :].expand(-1, n, -1).contiguous())


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each sample of x (B, C, H, W) with its own sigma (B,),
    edge-replicated borders (so values stay within the input's range): M_H · x · M_Wᵀ."""
    _, _, h, w = x.shape
    mh, mw = blur_matrices(sigmas, h).to(x), blur_matrices(sigmas, w).to(x)
    return mh[:, None] @ x @ mw.transpose(1, 2)[:, None]


def stochastic_gaussian_smoothing(code: torch.Tensor, generator: torch.Generator | None,
                                  sigma_range: tuple[float, float] = (0.5, 3.0),
                                  n_kernels: int = 3) -> torch.Tensor:
    """DGT's stochastic Gaussian smoothing of the codes, so G sees soft, varied boundaries.

    What is implemented: per sample, draw `n_kernels` sigmas uniformly in `sigma_range` and
    convex weights w ~ Dirichlet(1, ..., 1) (normalised −log U draws); return
    Σ_k w_k · GaussianBlur_{σ_k}(code). All channels of a sample share the draws, so smoothing
    the concatenated [F, B] code keeps Σ_channels = 1 (a soft partition of the window). Kernels
    are normalised and borders replicated, so values stay in [0, 1]. Degenerate setting:
    sigma_range (0, 0) returns the input (up to float rounding of Σ w_k = 1). All draws come
    from `generator` (CPU), so the result is deterministic per generator state.
    """
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not 0 <= lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 <= low <= high, got {sigma_range}")
    if n_kernels < 1:
        raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
    b = code.shape[0]
    sigmas = lo + (hi - lo) * torch.rand(n_kernels, b, generator=generator)
    weights = -torch.log(torch.rand(n_kernels, b, generator=generator).clamp_min(1e-12))
    weights = (weights / weights.sum(dim=0, keepdim=True)).to(code)
    out = torch.zeros_like(code)
    for k in range(n_kernels):
        out = out + weights[k].view(b, 1, 1, 1) * gaussian_blur(code, sigmas[k])
    return out.clamp(0, 1)


def smoothed_codes(mask: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: torch.Generator | None,
                   sigma_range: tuple[float, float], n_kernels: int) -> torch.Tensor:
    """concat(smoothed F, smoothed B): (B, K + 1, H, W), one smoothing draw per sample.

    Equal to `stochastic_gaussian_smoothing(concat(F, B), ...)` with the same generator state:
    the smoothing is linear and per-sample, and F's other-class channels are zero, so only the
    compact code (mask, 1 − mask) is blurred and the mask's result is placed in the class channel.
    """
    compact = stochastic_gaussian_smoothing(torch.cat([mask, background_code(mask)], dim=1), generator,
                                            sigma_range, n_kernels)
    return torch.cat([foreground_code(compact[:, :1], labels, num_classes), compact[:, 1:]], dim=1)


def generator_input(codes: torch.Tensor, background: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """G's input: concat(smoothed F, smoothed B, defect-free image[, noise channel])."""
    parts = [codes, background] + ([noise] if noise is not None else [])
    return torch.cat(parts, dim=1)


# ---- the self-supervised "defect-free" input ----

def fill_region(image: np.ndarray, mask: np.ndarray, method: str = "telea", radius: int = 3) -> np.ndarray:
    """Replace the masked region of a uint8 (H, W) or (H, W, C) image by a plausible background:
    cv2.inpaint (Telea's fast-marching method) or the mean of the pixels outside the mask.
    Pixels outside the mask are unchanged."""
    if method not in FILLS:
        raise ValueError(f"fill method must be one of {FILLS}, got {method!r}")
    mask = np.asarray(mask, bool)
    if not mask.any():
        return image.copy()
    if method == "mean" or mask.all():
        out = image.copy()
        outside = image[~mask] if (~mask).any() else image.reshape(-1, *image.shape[2:])
        out[mask] = np.rint(outside.reshape(-1, *image.shape[2:]).mean(axis=0)).astype(np.uint8)
        return out
    import cv2

    src = np.ascontiguousarray(image)
    if src.ndim == 3 and src.shape[2] == 1:
        src = src[..., 0]
    out = cv2.inpaint(src, mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    out = out.reshape(image.shape)
    out[~mask] = image[~mask]
    return out


def defect_free_input(images: torch.Tensor, masks: torch.Tensor, method: str = "telea") -> torch.Tensor:
    """Batch version of `fill_region` on [-1, 1] tensors: the generator's "defect-free image"
    (the real crop with its defect region re-filled from the surroundings)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    msk = masks.detach().cpu().numpy()[:, 0] > 0.5
    filled = np.stack([fill_region(a, m, method) for a, m in zip(arr, msk)])
    out = torch.from_numpy(filled).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return out.to(images.device, images.dtype)


# ---- region losses ----

def masked_l1(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean |a − b| over the pixels (and channels) where `region` (B, 1, H, W) is 1; 0 if empty."""
    weight = region.expand_as(a)
    return ((a - b).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def foreground_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Foreground loss: L1 between the output and the real defective image inside the mask."""
    return masked_l1(output, target, mask)


def background_l1(output: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Background loss: L1 between the output and the defect-free input outside the mask."""
    return masked_l1(output, background, 1 - mask)


def boundary_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Blended region: the mask dilated by `width` minus the mask eroded by `width` (square
    structuring element, (2·width + 1)²), i.e. a band of ±width pixels around the boundary."""
    if width < 1:
        return torch.zeros_like(mask)
    k = 2 * width + 1
    dilated = F.max_pool2d(mask, k, stride=1, padding=width)
    eroded = -F.max_pool2d(F.pad(-mask, (width,) * 4, value=-1.0), k, stride=1)  # outside counts as mask
    return (dilated - eroded).clamp(0, 1)


def blend_l1(output: torch.Tensor, target: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Blended-region loss: L1 between the output and the real image in the boundary band."""
    return masked_l1(output, target, band)


# ---- networks ----

def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class UNetGenerator(nn.Module):
    """DGT's generator: a skip-connected encoder-decoder (small U-Net) from
    concat(F, B, defect-free image[, noise]) to the defect image (tanh, [-1, 1]).

    `residual=True`: forward(x, base) with base = the defect-free image predicts a residual in
    tanh's pre-activation space, out = tanh(head + atanh(base)), with a zero-initialised head,
    so G starts as the identity on its input and its capacity goes to the defect; otherwise
    out = tanh(head)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, depth: int = 3,
                 residual: bool = False):
        super().__init__()
        self.residual = residual
        widths = [channels * min(2**i, 4) for i in range(depth + 1)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), _norm(widths[i + 1]),
                          nn.LeakyReLU(0.2), nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1),
                          _norm(widths[i + 1]), nn.LeakyReLU(0.2))
            for i in range(depth))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i + 1] + widths[i], widths[i], 3, padding=1), _norm(widths[i]),
                          nn.LeakyReLU(0.2), nn.Conv2d(widths[i], widths[i], 3, padding=1), _norm(widths[i]),
                          nn.LeakyReLU(0.2))
            for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = block(torch.cat([y, skip], dim=1))
        y = self.head(y)
        if self.residual:
            if base is None:
                raise ValueError("a residual UNetGenerator needs base (the defect-free image)")
            y = y + torch.atanh(base.clamp(-0.995, 0.995))
        return torch.tanh(y)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: logits (B, 1, h, w), one per overlapping patch; with
    `mask_channels=1` it is conditioned on the mask (concatenated to the image)."""

    def __init__(self, in_channels: int, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers):
            nxt = channels * min(2**i, 8)
            mods += [nn.Conv2d(width, nxt, 4, stride=2 if i < layers - 1 else 1, padding=1), nn.LeakyReLU(0.2)]
            width = nxt
        mods.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
