"""R3GAN-style networks for defect generation, after Huang, Gokaslan, Kuleshov, Tompkin, "The GAN
is dead; long live the GAN! A Modern GAN Baseline", NeurIPS 2024 (reference code: brownvc/R3GAN).

What is taken from the paper's §3 roadmap (the modernised "Config E" network, its Fig. 3):
- residual blocks x + conv1x1(act(grouped conv3x3(act(conv1x1(x))))): an inverted bottleneck
  (hidden = channels · expansion), grouped 3x3 convolutions (cardinality = hidden / group_size),
  no normalisation layers, LeakyReLU(0.2) with a learned bias in front of it ("biased activation");
- fix-up style initialisation: the last conv of each residual branch is zero, the others are
  N(0, std²) with std = gain / sqrt(fan_in) · L^(−1 / (2m − 2)) (gain = the LeakyReLU's
  sqrt(2 / (1 + 0.2²)), L = the network's number of residual blocks, m = 3 convs per branch), so
  every block starts as the identity;
- interpolative resampling with the [1, 2, 1] low-pass filter (outer product, normalised): blur
  then stride for downsampling, zero insertion then blur for upsampling; channel changes by 1x1
  convs beside the resamplers (transition layers have no activation);
- projection conditioning in D: logit = linear(h) + <embed(class), h> on the pooled features h.

Deviations, for the inpainting task: the generator is an encoder-decoder with skip connections
(input: clean crop + mask + noise channels, class embeddings added at every stage, tanh output)
instead of R3GAN's noise-to-image decoder; D sees the mask as an extra input channel; the
resamplers use a 3-tap [1, 2, 1] kernel with edge-replicated borders (the reference convolves the
filter with [1, 1] into a 4-tap kernel); D's final "discriminative basis" is a depthwise conv over
the whole last feature map, whatever its size (4x4 in the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2 / (1 + NEGATIVE_SLOPE**2))  # He gain of LeakyReLU(0.2)
LOWPASS_1D = (1.0, 2.0, 1.0)


# ---- [1, 2, 1] interpolative resampling ----

def lowpass_kernel(taps=LOWPASS_1D) -> torch.Tensor:
    """The 2-D low-pass filter: outer product of `taps` with itself, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, **kwargs) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(x, kernel.to(x)[None, None].expand(c, 1, -1, -1), groups=c, **kwargs)


def lowpass_downsample(x: torch.Tensor) -> torch.Tensor:
    """Blur with [1, 2, 1] ⊗ [1, 2, 1] / 16 (edge-replicated borders), then keep every second
    pixel: (B, C, H, W) → (B, C, H/2, W/2); a constant image stays the same constant."""
    return _depthwise(F.pad(x, (1, 1, 1, 1), mode="replicate"), lowpass_kernel(), stride=2)


def lowpass_upsample(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels, then blur with 4 · [1, 2, 1] ⊗ [1, 2, 1] / 16 (bilinear
    interpolation; the last row / column is edge-replicated): (B, C, H, W) → (B, C, 2H, 2W)."""
    n, c, h, w = x.shape
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    up = x.new_zeros(n, c, 2 * h + 2, 2 * w + 2)
    up[..., ::2, ::2] = x
    return _depthwise(up, 4 * lowpass_kernel(), padding=1)[..., : 2 * h, : 2 * w]


# ---- layers ----

def msr_init(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """N(0, (gain / sqrt(fan_in))²) weights (all zero for gain 0), zero bias."""
    fan_in = layer.weight[0].numel()  # (in / groups) · k · k for convs, in_features for Linear
    with torch.no_grad():
        if gain == 0:
            layer.weight.zero_()
        else:
            layer.weight.normal_(0.0, gain / math.sqrt(fan_in))
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()
    return layer


def conv(c_in: int, c_out: int, kernel_size: int = 1, groups: int = 1, gain: float = 1.0) -> nn.Conv2d:
    """A bias-free 'same' convolution with MSR initialisation (biases live in the activations)."""
    return msr_init(nn.Conv2d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2, groups=groups,
                              bias=False), gain)


class BiasedActivation(nn.Module):
    """LeakyReLU(0.2)(x + b) with a learned per-channel bias b (R3GAN's BiasedActivation)."""

    gain = ACTIVATION_GAIN

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], NEGATIVE_SLOPE)


class ResidualBlock(nn.Module):
    """x + conv1x1(act(grouped conv3x3(act(conv1x1(x))))), normalisation-free (R3GAN §3, Config E).

    `n_blocks` is the variance scaling parameter L (the number of residual blocks of the whole
    network): the first two convs get std = gain / sqrt(fan_in) · L^(−1/4) (m = 3 convs in the
    branch, exponent −1 / (2m − 2)), the last conv is zero, so the block starts as the identity.
    """

    n_convs = 3

    def __init__(self, channels: int, expansion: int = 2, group_size: int = 16, n_blocks: int = 1,
                 kernel_size: int = 3):
        super().__init__()
        hidden = channels * expansion
        if group_size < 1 or hidden % group_size:
            raise ValueError(f"hidden channels {hidden} (= {channels} x {expansion}) must be a multiple of "
                             f"group_size {group_size}")
        self.variance_scaling = n_blocks
        gain = BiasedActivation.gain * n_blocks ** (-1 / (2 * self.n_convs - 2))
        self.conv1 = conv(channels, hidden, 1, gain=gain)
        self.act1 = BiasedActivation(hidden)
        self.conv2 = conv(hidden, hidden, kernel_size, groups=hidden // group_size, gain=gain)
        self.act2 = BiasedActivation(hidden)
        self.conv3 = conv(hidden, channels, 1, gain=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


class Downsample(nn.Module):
    """Transition: [1, 2, 1] downsampling, then a 1x1 conv when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = conv(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(lowpass_downsample(x))


class Upsample(nn.Module):
    """Transition: a 1x1 conv when the width changes, then [1, 2, 1] upsampling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = conv(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowpass_upsample(self.proj(x))


def _stage(width: int, blocks: int, expansion: int, group_size: int, total: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(width, expansion, group_size, total) for _ in range(blocks)])


def residual_blocks(module: nn.Module) -> list[ResidualBlock]:
    """Every ResidualBlock of `module`, in forward (registration) order."""
    return [m for m in module.modules() if isinstance(m, ResidualBlock)]


# ---- networks ----

class R3GANUNet(nn.Module):
    """Single-stage generator G(clean, mask, class, noise) → defect crop (tanh, [−1, 1]).

    Encoder stages at widths[0..S−1] (residual blocks, [1, 2, 1] downsampling between them),
    decoder stages at widths[S−2..0] ([1, 2, 1] upsampling, the encoder's skip concatenated and
    merged by a 1x1 conv, residual blocks); a learned class embedding is added (broadcast over the
    pixels) at the start of every stage. The variance scaling parameter is the total number of
    residual blocks, blocks · (2S − 1). Compositing inside the mask is the caller's job.
    """

    def __init__(self, channels: int, num_classes: int, widths=(32, 64, 128), blocks: int = 1,
                 expansion: int = 2, group_size: int = 16, noise_channels: int = 1):
        super().__init__()
        widths = list(widths)
        s, total = len(widths), blocks * (2 * len(widths) - 1)
        self.noise_channels = noise_channels
        self.stem = conv(channels + 1 + noise_channels, widths[0])
        self.encoder = nn.ModuleList(_stage(w, blocks, expansion, group_size, total) for w in widths)
        self.down = nn.ModuleList(Downsample(widths[i], widths[i + 1]) for i in range(s - 1))
        self.up = nn.ModuleList(Upsample(widths[i + 1], widths[i]) for i in range(s - 1))
        self.merge = nn.ModuleList(conv(2 * widths[i], widths[i]) for i in range(s - 1))
        self.decoder = nn.ModuleList(_stage(widths[i], blocks, expansion, group_size, total) for i in range(s - 1))
        self.enc_embed = nn.ModuleList(nn.Embedding(num_classes, w) for w in widths)
        self.dec_embed = nn.ModuleList(nn.Embedding(num_classes, widths[i]) for i in range(s - 1))
        self.head = conv(widths[0], channels)

    def forward(self, clean: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = clean.new_zeros(clean.shape[0], self.noise_channels, *clean.shape[2:])
        x = self.stem(torch.cat([clean, mask.to(clean), noise.to(clean)], dim=1))
        skips = []
        for i, stage in enumerate(self.encoder):
            if i:
                x = self.down[i - 1](x)
            x = stage(x + self.enc_embed[i](labels)[:, :, None, None].to(x.dtype))
            skips.append(x)
        skips.pop()
        for i in reversed(range(len(self.decoder))):
            x = self.merge[i](torch.cat([self.up[i](x), skips.pop()], dim=1))
            x = self.decoder[i](x + self.dec_embed[i](labels)[:, :, None, None].to(x.dtype))
        return torch.tanh(self.head(x))


class ProjectionDiscriminator(nn.Module):
    """D(image, mask, class) → one logit per sample, R3GAN's discriminator with projection
    conditioning: stages of residual blocks with [1, 2, 1] downsampling between them, a depthwise
    "basis" conv over the whole last map and logit = linear(h) + <embed(class), h> (h: the pooled
    features, `features`). The mask is concatenated to the image as an input channel."""

    def __init__(self, channels: int, num_classes: int, resolution: int, widths=(32, 64, 128),
                 blocks: int = 1, expansion: int = 2, group_size: int = 16):
        super().__init__()
        widths = list(widths)
        s, total = len(widths), blocks * len(widths)
        final = resolution // 2 ** (s - 1)
        self.stem = conv(channels + 1, widths[0])
        self.stages = nn.ModuleList(_stage(w, blocks, expansion, group_size, total) for w in widths)
        self.down = nn.ModuleList(Downsample(widths[i], widths[i + 1]) for i in range(s - 1))
        self.basis = msr_init(nn.Conv2d(widths[-1], widths[-1], final, groups=widths[-1], bias=False))
        self.linear = msr_init(nn.Linear(widths[-1], 1))
        self.embed = nn.Embedding(num_classes, widths[-1])
        nn.init.normal_(self.embed.weight, 0.0, 1 / math.sqrt(widths[-1]))

    def features(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: (B, widths[-1])."""
        x = self.stem(torch.cat([image, mask.to(image)], dim=1))
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.down):
                x = self.down[i](x)
        return self.basis(x).flatten(1)

    def project(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logit = linear(h) + <embed(class), h>: (B,)."""
        return self.linear(h)[:, 0] + (self.embed(labels).to(h.dtype) * h).sum(dim=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(image, mask), labels)
