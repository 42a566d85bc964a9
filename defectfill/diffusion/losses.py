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

    A weighted mean of the squared error: dividing by the weight's area makes the loss scale
    independent of the defect size, so small defects and large ones train at the same rate.
    `weight` multiplies the SQUARED error here; for the paper's ||W ⊙ (eps - eps_hat)||² pass W².
    `weight` has one channel and is broadcast over C.
    """
    weight = weight.to(pred.dtype).expand_as(pred)
    per_item = (weight * (pred.float() - target.float()) ** 2).flatten(1).sum(1)
    area = weight.flatten(1).sum(1).clamp_min(1e-8)
    return (per_item / area).mean()


def defect_loss(eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_def = ||M ⊙ (eps - eps_hat)||² (paper Sec. 3.2, "defect loss"): noise MSE inside the real defect mask M.

    Normalised by the mask's area: sum(M² e²) / (sum(M²) · C) per item, e = eps - eps_hat, then
    the batch mean. M is binary (M² = M), so squaring the weight changes nothing here.
    The UNet was conditioned on prompt "A photo of [V*]", the image with M blanked, and M.
    """
    return weighted_mse(eps_hat, eps, mask)


def object_loss_weight(mask: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """M' = M + alpha · (1 − M) (paper Sec. 3.2, "object loss" weight): full weight on the defect, alpha elsewhere."""
    return mask + alpha * (1.0 - mask)


OBJECT_LOSS_WEIGHTINGS = ("paper", "alpha")


def object_loss(eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor, alpha: float = 0.3,
                weighting: str = "paper") -> torch.Tensor:
    """L_obj = ||M' ⊙ (eps − eps_hat)||², M' = M + alpha · (1 − M) (paper Sec. 3.2, "object loss").

    ``weighting="paper"`` (default) follows the equation literally: M' multiplies the error before
    squaring, so the squared error is weighted by M'² — 1 on the defect, alpha² (0.09 for 0.3)
    elsewhere. Normalisation: divided by the squared weight's area, sum(M'² e²) / (sum(M'²) · C)
    per item (e = eps − eps_hat), then the batch mean. That is the same rule as L_def (its weight
    M is binary, M² = M), so both losses are weighted MEANS of the squared noise error on the
    same scale and λ_def : λ_obj compares like with like, independent of the defect's size;
    alpha = 1 gives the plain MSE and alpha = 0 gives L_def. (A mean over all elements instead
    would shrink L_obj with the defect's area, by up to alpha², against an area-normalised L_def.)

    ``weighting="alpha"``: the squared error weighted by M' itself (alpha = 0.3 off the defect),
    sum(M' e²) / (sum(M') · C) — what earlier versions of this code computed.

    The UNet was conditioned on prompt "A [object] with [V*]" and the random-box mask M_rand
    (union of boxes); M is still the real defect mask, which only sets the weight.
    """
    weight = object_loss_weight(mask, alpha)
    if weighting == "paper":
        weight = weight * weight
    elif weighting != "alpha":
        raise ValueError(f"object loss weighting must be one of {', '.join(OBJECT_LOSS_WEIGHTINGS)}, got {weighting!r}")
    return weighted_mse(eps_hat, eps, weight)


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
