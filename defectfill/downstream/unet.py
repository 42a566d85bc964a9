"""The plain U-Net the segmenter and DIS share: a conv block, the padded encoder, the decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    """(conv3x3 - BatchNorm - ReLU) x 2."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def unet_encode(down: nn.ModuleList, x: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Replicate-pad ``x`` to a multiple of ``2**depth``, then run the encoder ``down`` (a max-pool
    before every block but the first); returns the skips, deepest last. Shared by the U-Nets here
    and in ``defectfill.downstream.dis``."""
    h, w = x.shape[-2:]
    m = 2**depth
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    skips = []
    for i, block in enumerate(down):
        x = block(x if i == 0 else F.max_pool2d(x, 2))
        skips.append(x)
    return skips


class UNet(nn.Module):
    """Plain U-Net: ``depth`` max-pool downsamplings, transposed-conv upsampling, skip concatenation.

    Returns logits (B, 1, H, W) for any H, W: inputs are replicate-padded to a multiple of
    ``2**depth`` and the output is cropped back.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.dec = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        skips = unet_encode(self.down, x, self.depth)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)[..., :h, :w]
