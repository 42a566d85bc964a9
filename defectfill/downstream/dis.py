"""DIS, DGT's defect image segmentation network ("Open-Set Fabric Defect Detection With Defect
Generation and Transfer", IEEE TIM 2025): a U-Net that turns a fabric image into a pixel heat map
of defect probability.

:class:`DISUNet` is a plain U-Net from random initialisation (GroupNorm, so its output does not
depend on the other samples of a batch and train/eval behave alike); it is also the segmenter
family's ``arch="dis_unet"`` (:mod:`defectfill.downstream.segmenter`). Inputs are float images in
[0, 1] (grey or RGB), like every segmenter of the benchmark; outputs are logits (B, 1, H, W) and
``sigmoid(logits)`` is the heat map. :func:`dis_loss` is the training loss (BCE + soft Dice).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectfill.downstream.unet import unet_encode

DICE_SMOOTH = 1.0


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


def _block(cin: int, cout: int) -> nn.Sequential:
    """(conv3x3 - GroupNorm - ReLU) x 2."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class DISUNet(nn.Module):
    """DGT's DIS: a U-Net with ``depth`` max-pool downsamplings (widths ``width * 2**i``, capped at
    ``8 * width``), bilinear upsampling and skip concatenation.

    ``forward(x)``: float (B, in_channels, H, W) in [0, 1] -> logits (B, 1, H, W) for any H, W (the
    input is replicate-padded to a multiple of ``2**depth`` and the output cropped back).
    """

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or depth < 1:
            raise ValueError(f"DISUNet needs in_channels, width, depth >= 1, got {in_channels}, {width}, {depth}")
        widths = [width * min(2**i, 8) for i in range(depth + 1)]
        self.in_channels, self.depth = in_channels, depth
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.dec = nn.ModuleList([_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        skips = unet_encode(self.down, x, self.depth)
        x = skips.pop()
        for dec in self.dec:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)[..., :h, :w]


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Mean over samples of 1 - (2 Σ p·m + s) / (Σ p + Σ m + s), p = sigmoid(logits), s = ``smooth``
    (so a sample with an empty mask is pushed towards an empty prediction rather than being undefined)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    m = masks.float().flatten(1)
    dice = (2 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)
    return (1 - dice).mean()


def dis_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """DIS loss of the DGT paper's defect image segmentation branch: pixel-wise supervision of the
    heat map by the defect mask. What is implemented: mean pixel BCE-with-logits + soft Dice
    (:func:`soft_dice_loss`, smooth 1), equal weights. BCE gives every pixel a gradient; Dice keeps
    the small defect region from being swamped by the background pixels (defects cover a few per
    cent of a crop). ``logits`` and ``masks`` are (B, 1, H, W), masks in {0, 1}."""
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    bce = F.binary_cross_entropy_with_logits(logits.float(), masks.float())
    return bce + soft_dice_loss(logits, masks)


@torch.no_grad()
def heat_map(model: nn.Module, image) -> torch.Tensor:
    """The defect heat map sigmoid(model(image)).

    ``image``: a float tensor in [0, 1], (B, C, H, W), (C, H, W) or (H, W); or a uint8 numpy array
    (H, W) / (H, W, C) (scaled by 1/255). Returns probabilities (B, H, W) for a batch, else (H, W),
    on the CPU. The model runs in eval mode on its own device and its mode is restored."""
    single = True
    if isinstance(image, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(image)).float()
        if image.dtype == np.uint8:
            x = x / 255.0
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    else:
        x = torch.as_tensor(image).float()
        if x.ndim == 2:
            x = x[None]
        single = x.ndim == 3
    if x.ndim == 3:
        x = x[None]
    channels = getattr(model, "in_channels", x.shape[1])
    if x.shape[1] != channels:  # grey <-> RGB
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        probs = torch.sigmoid(model(x.to(device))[:, 0].float()).cpu()
    finally:
        model.train(was_training)
    return probs[0] if single else probs
