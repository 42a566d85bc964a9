"""The three DefectFill training losses (Song et al., "DefectFill: Realistic Defect Generation
with Inpainting Diffusion Model for Visual Inspection", CVPR 2025, Sec. 3.2), as pure functions.

Notation of the paper: eps is the true noise, eps_hat the UNet's prediction, M the real defect
mask at latent resolution, M_rand the random-box mask, A the cross-attention map of [V*].
All masks are float tensors in [0, 1] broadcastable to the prediction, shape (B, 1, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(weight * (pred - target)^2) / (sum(weight) * C), averaged over the batch.

    The paper writes the masked losses as squared norms ||W ⊙ (eps - eps_hat)||²; dividing by
    the weight's area makes the loss scale independent of the defect size, so small defects
    and large ones train at the same rate. `weight` has one channel and is broadcast over C.
    """
    weight = weight.to(pred.dtype).expand_as(pred)
    per_item = (weight * (pred.float() - target.float()) ** 2).flatten(1).sum(1)
    area = weight.flatten(1).sum(1).clamp_min(1e-8)
    return (per_item / area).mean()


def defect_loss(eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_def (paper Sec. 3.2, "defect loss"): noise MSE inside the real defect mask M only.

    The UNet was conditioned on prompt "A photo of [V*]", the image with M blanked, and M.
    """
    return weighted_mse(eps_hat, eps, mask)


def object_loss_weight(mask: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """M' = M + alpha · (1 − M) (paper Sec. 3.2, "object loss" weight): full weight on the defect, alpha elsewhere."""
    return mask + alpha * (1.0 - mask)


def object_loss(eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """L_obj (paper Sec. 3.2, "object loss"): noise MSE weighted by M' = M + alpha · (1 − M).

    The UNet was conditioned on prompt "A [object] with [V*]" and the random-box mask M_rand
    (union of boxes); M is still the real defect mask, which only sets the weight.
    """
    return weighted_mse(eps_hat, eps, object_loss_weight(mask, alpha))


def attention_loss(attention_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_attn (paper Sec. 3.2, "attention loss"): mean squared error between the [V*] cross-attention map A and M.

    A is averaged over heads and decoder cross-attention layers and resized to the latent grid.
    """
    return F.mse_loss(attention_map.float(), mask.float())


def total_loss(
    l_def: torch.Tensor,
    l_obj: torch.Tensor,
    l_attn: torch.Tensor,
    lambda_def: float = 0.5,
    lambda_obj: float = 0.2,
    lambda_attn: float = 0.05,
) -> torch.Tensor:
    """L = λ_def·L_def + λ_obj·L_obj + λ_attn·L_attn (paper Sec. 3.2, total objective; defaults 0.5, 0.2, 0.05)."""
    return lambda_def * l_def + lambda_obj * l_obj + lambda_attn * l_attn


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) → latent grid by max pooling: a latent cell counts as defect if
    any of its pixels does, so thin or tiny defects do not vanish (nearest resizing drops them)."""
    return F.adaptive_max_pool2d(mask.float(), size)
