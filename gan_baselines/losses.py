"""Adversarial losses for the GAN baselines, selectable per baseline in its config.

- "bce": the classic non-saturating GAN loss (Goodfellow et al. 2014):
  L_D = softplus(−D(x)) + softplus(D(G(z))),  L_G = softplus(−D(G(z))).
- "r3gan": R3GAN (Huang et al., "The GAN is dead; long live the GAN!", NeurIPS 2024):
  relativistic pairing L_D = softplus(−(D(x) − D(G(z)))) + γ/2·(R1 + R2),
  L_G = softplus(−(D(G(z)) − D(x))), with R1/R2 the zero-centred gradient penalties
  ||∇_x D(x)||² on real and fake samples, and γ on a cosine schedule.
All return the batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "r3gan")


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−D(x)) + softplus(D(G(z))), i.e. BCE with labels real=1, fake=0."""
    return (F.softplus(-real_logits) + F.softplus(fake_logits)).mean()


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def relativistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """R3GAN's relativistic pairing loss for D: softplus(−(D(x) − D(G(z))))."""
    return F.softplus(-(real_logits - fake_logits)).mean()


def relativistic_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """R3GAN's relativistic pairing loss for G: softplus(−(D(G(z)) − D(x)))."""
    return F.softplus(-(fake_logits - real_logits)).mean()


def zero_centered_gradient_penalty(samples: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ||∇_x D(x)||² (R1 on real samples, R2 on fake ones); `samples` must require grad."""
    (grad,) = torch.autograd.grad(logits.sum(), samples, create_graph=True)
    return grad.square().flatten(1).sum(1)


def cosine_schedule(step: int, total: int, start: float, end: float) -> float:
    """Cosine decay from `start` (step 0) to `end` (step >= total), R3GAN's γ schedule."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def discriminator_loss(kind: str, critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                       fake: torch.Tensor, gamma: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """D's loss for `kind`; `critic(x)` returns logits (conditioning bound in by the caller)."""
    if kind == "bce":
        loss = bce_d_loss(critic(real), critic(fake.detach()))
        return loss, {"loss_d": float(loss.detach())}
    if kind == "r3gan":
        real = real.detach().requires_grad_(True)
        fake = fake.detach().requires_grad_(True)
        real_logits, fake_logits = critic(real), critic(fake)
        r1 = zero_centered_gradient_penalty(real, real_logits).mean()
        r2 = zero_centered_gradient_penalty(fake, fake_logits).mean()
        adv = relativistic_d_loss(real_logits, fake_logits)
        loss = adv + gamma / 2 * (r1 + r2)
        logs = {"loss_d": loss, "loss_d_adv": adv, "r1": r1, "r2": r2}
        return loss, {**{k: float(v.detach()) for k, v in logs.items()}, "gamma": gamma}
    raise ValueError(f"unknown adversarial loss {kind!r}; choose from {LOSSES}")


def generator_loss(kind: str, critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                   fake: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss for `kind` (gradients flow into `fake` only)."""
    if kind == "bce":
        return bce_g_loss(critic(fake))
    if kind == "r3gan":
        return relativistic_g_loss(critic(real.detach()), critic(fake))
    raise ValueError(f"unknown adversarial loss {kind!r}; choose from {LOSSES}")
