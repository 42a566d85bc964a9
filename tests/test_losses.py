"""Tests for defectfill.diffusion.losses against values worked out by hand on tiny tensors."""

import math

import pytest
import torch

from defectfill.diffusion.losses import (
    attention_loss,
    defect_loss,
    latent_mask,
    object_loss,
    object_loss_weight,
    total_loss,
    weighted_mse,
)


def t(values):
    return torch.tensor(values, dtype=torch.float32)


# eps_hat = [[1, 2], [3, 4]], eps = 0, M = [[1, 0], [0, 1]]  (shape 1x1x2x2)
EPS_HAT = t([[[[1.0, 2.0], [3.0, 4.0]]]])
EPS = torch.zeros(1, 1, 2, 2)
DIAG = t([[[[1.0, 0.0], [0.0, 1.0]]]])


# ---------------------------------------------------------------- weighted_mse


def test_weighted_mse_two_channels_broadcast_weight_and_per_item_area():
    # B=2, C=2, 1x2 pixels; the one-channel weight is broadcast over both channels.
    pred = t([
        [[[1.0, 5.0]], [[2.0, 7.0]]],  # item 0: ch0 = [1, 5], ch1 = [2, 7]
        [[[1.0, 1.0]], [[3.0, 0.0]]],  # item 1: ch0 = [1, 1], ch1 = [3, 0]
    ])
    target = torch.zeros_like(pred)
    weight = t([
        [[[1.0, 0.0]]],  # item 0: mask area 1 pixel
        [[[1.0, 1.0]]],  # item 1: mask area 2 pixels
    ])
    # item 0: weighted squared errors = ch0 1*1 + 0*25 = 1, ch1 1*4 + 0*49 = 4 -> 5;
    #         denominator = sum(weight) * C = 1 * 2 = 2 -> 5 / 2 = 2.5
    # item 1: 1 + 1 + 9 + 0 = 11; denominator = 2 * 2 = 4 -> 11 / 4 = 2.75
    # batch mean of the per-item ratios: (2.5 + 2.75) / 2 = 2.625
    # (a global ratio (5 + 11) / (2 + 4) = 2.6667 would be wrong: each item is normalised by its own area)
    loss = weighted_mse(pred, target, weight)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(2.625, abs=1e-6)


def test_weighted_mse_fractional_weight_and_nonzero_target():
    pred = t([[[[3.0, 1.0]]]])
    target = t([[[[1.0, 2.0]]]])
    weight = t([[[[0.5, 0.25]]]])
    # errors: (3-1)^2 = 4, (1-2)^2 = 1 -> 0.5*4 + 0.25*1 = 2.25; area = 0.75 * 1 channel -> 3.0
    assert weighted_mse(pred, target, weight).item() == pytest.approx(3.0, abs=1e-6)


def test_weighted_mse_empty_mask_is_zero_not_nan():
    # area is clamped, so an item with an empty weight contributes 0 instead of 0/0 = nan
    loss = weighted_mse(EPS_HAT, EPS, torch.zeros(1, 1, 2, 2))
    assert math.isfinite(loss.item())
    assert loss.item() == 0.0


# ---------------------------------------------------------------- defect_loss


def test_defect_loss_hand_value():
    # in-mask squared errors: 1^2 + 4^2 = 17 over 2 masked pixels -> 8.5
    assert defect_loss(EPS_HAT, EPS, DIAG).item() == pytest.approx(8.5, abs=1e-6)


def test_defect_loss_ignores_predictions_outside_mask():
    changed = EPS_HAT.clone()
    changed[0, 0, 0, 1] = 100.0  # outside M
    changed[0, 0, 1, 0] = -55.0  # outside M
    assert defect_loss(changed, EPS, DIAG).item() == pytest.approx(8.5, abs=1e-6)
    # ... while an in-mask change does count: (1^2 + 6^2) / 2 = 18.5
    changed[0, 0, 1, 1] = 6.0
    assert defect_loss(changed, EPS, DIAG).item() == pytest.approx(18.5, abs=1e-6)


def test_defect_loss_gradient_zero_outside_mask():
    eps_hat = EPS_HAT.clone().requires_grad_(True)
    defect_loss(eps_hat, EPS, DIAG).backward()
    # d/d eps_hat of sum(M * (eps_hat - eps)^2) / area = 2 * M * eps_hat / 2 = M * eps_hat
    # -> [[1, 0], [0, 4]]
    assert eps_hat.grad.tolist() == [[[[1.0, 0.0], [0.0, 4.0]]]]


# ---------------------------------------------------------------- object loss


def test_object_loss_weight_formula():
    mask = t([[[[1.0, 0.0], [0.5, 0.0]]]])
    # M + 0.3 (1 - M): 1 -> 1, 0 -> 0.3, 0.5 -> 0.5 + 0.15 = 0.65
    w = object_loss_weight(mask, alpha=0.3)
    assert torch.allclose(w, t([[[[1.0, 0.3], [0.65, 0.3]]]]), atol=1e-7)
    # default alpha is the paper's 0.3
    assert torch.allclose(object_loss_weight(mask), w)
    # alpha = 0.5: 0 -> 0.5, 0.5 -> 0.75
    assert torch.allclose(object_loss_weight(mask, alpha=0.5), t([[[[1.0, 0.5], [0.75, 0.5]]]]))


def test_object_loss_paper_hand_value_alpha_03():
    # the paper: ||M' ⊙ (eps - eps_hat)||², M' = [[1, 0.3], [0.3, 1]] multiplies the error BEFORE squaring:
    # (M' e)² = [[1*1, 0.3²*4], [0.3²*9, 1*16]] = [[1, 0.36], [0.81, 16]] -> sum = 18.17
    # normalised by sum(M'²) * C = (1 + 0.09 + 0.09 + 1) * 1 = 2.18 -> 18.17 / 2.18 = 1817 / 218 = 8.334862...
    expected = 1817 / 218
    assert object_loss(EPS_HAT, EPS, DIAG, alpha=0.3, weighting="paper").item() == pytest.approx(expected, rel=1e-6)
    assert object_loss(EPS_HAT, EPS, DIAG, alpha=0.3).item() == pytest.approx(expected, rel=1e-6)  # the default
    assert object_loss(EPS_HAT, EPS, DIAG).item() == pytest.approx(expected, rel=1e-6)  # alpha 0.3 by default too


def test_object_loss_paper_equals_weighted_mse_of_the_weighted_error():
    # sum((M' e)²) / sum(M'²) / C, literally: weight the error first, square, then normalise
    mask = t([[[[1.0, 0.0], [0.5, 0.0]]]])
    eps = t([[[[0.5, -1.0], [2.0, 1.0]]]])
    weighted_error = object_loss_weight(mask, 0.3) * (EPS_HAT - eps)
    expected = (weighted_error ** 2).sum() / (object_loss_weight(mask, 0.3) ** 2).sum()
    # by hand: M' = [[1, 0.3], [0.65, 0.3]], e = [[0.5, 3], [1, 3]] -> (M' e)² = [[0.25, 0.81], [0.4225, 0.81]]
    # sum = 2.2925; sum(M'²) = 1 + 0.09 + 0.4225 + 0.09 = 1.6025 -> 2.2925 / 1.6025 = 1.430577...
    assert expected.item() == pytest.approx(2.2925 / 1.6025, rel=1e-6)
    assert object_loss(EPS_HAT, eps, mask, alpha=0.3).item() == pytest.approx(2.2925 / 1.6025, rel=1e-6)


def test_object_loss_alpha_option_is_the_old_weighting():
    # "alpha": squared errors [[1, 4], [9, 16]] weighted by M' itself (not squared):
    # numerator = 1 + 0.3*4 + 0.3*9 + 16 = 1 + 1.2 + 2.7 + 16 = 20.9; area = 2.6
    # 20.9 / 2.6 = 209 / 26 = 8.0384615...
    assert object_loss(EPS_HAT, EPS, DIAG, alpha=0.3, weighting="alpha").item() == pytest.approx(209 / 26, rel=1e-6)
    # ... bit for bit what the code computed before the paper weighting became the default
    old = weighted_mse(EPS_HAT, EPS, DIAG + 0.3 * (1 - DIAG))
    assert torch.equal(object_loss(EPS_HAT, EPS, DIAG, alpha=0.3, weighting="alpha"), old)


def test_object_loss_paper_vs_alpha_background_weight():
    # only background error (inside M: no error): e = [[0, 2], [3, 0]], M = diag
    eps_hat = t([[[[0.0, 2.0], [3.0, 0.0]]]])
    # paper: weights (M')² = [[1, 0.09], [0.09, 1]] -> (0.09*4 + 0.09*9) / 2.18 = 1.17 / 2.18 = 0.536697...
    assert object_loss(eps_hat, EPS, DIAG, weighting="paper").item() == pytest.approx(1.17 / 2.18, rel=1e-6)
    # alpha: weights M' = [[1, 0.3], [0.3, 1]] -> (0.3*4 + 0.3*9) / 2.6 = 3.9 / 2.6 = 1.5
    assert object_loss(eps_hat, EPS, DIAG, weighting="alpha").item() == pytest.approx(1.5, rel=1e-6)


def test_object_loss_two_channels_batch_of_two():
    # B=2, C=2, 1x2: item 0 M = [1, 0], item 1 M = [0, 0]; alpha 0.5 -> M' = [1, 0.5] and [0.5, 0.5]
    pred = t([[[[1.0, 2.0]], [[0.0, 2.0]]],
              [[[1.0, 1.0]], [[1.0, 1.0]]]])
    mask = t([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    # item 0: (M')² = [1, 0.25]; squared errors ch0 [1, 4], ch1 [0, 4] -> 1 + 1 + 0 + 1 = 3;
    #         denominator (1 + 0.25) * 2 = 2.5 -> 1.2
    # item 1: (M')² = [0.25, 0.25]; squared errors all 1 -> 4 * 0.25 = 1; denominator 0.5 * 2 = 1 -> 1.0
    # batch mean (1.2 + 1.0) / 2 = 1.1
    assert object_loss(pred, torch.zeros_like(pred), mask, alpha=0.5).item() == pytest.approx(1.1, rel=1e-6)
    # alpha weighting: item 0: 1 + 0.5*4 + 0 + 0.5*4 = 5 over 1.5*2 = 3 -> 5/3; item 1: 4*0.5 / (1*2) = 1
    # batch mean (5/3 + 1) / 2 = 4/3
    assert object_loss(pred, torch.zeros_like(pred), mask, alpha=0.5, weighting="alpha").item() == \
        pytest.approx(4 / 3, rel=1e-6)


def test_object_loss_paper_gradient():
    eps_hat = EPS_HAT.clone().requires_grad_(True)
    object_loss(eps_hat, EPS, DIAG).backward()
    # d/d eps_hat of sum(M'² eps_hat²) / 2.18 = 2 M'² eps_hat / 2.18
    # -> [[2/2.18, 2*0.09*2/2.18], [2*0.09*3/2.18, 2*4/2.18]]
    expected = t([[[[2.0, 0.36], [0.54, 8.0]]]]) / 2.18
    torch.testing.assert_close(eps_hat.grad, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weighting", ["paper", "alpha"])
def test_object_loss_alpha_extremes(weighting):
    # alpha = 1: uniform weight, plain MSE (1 + 4 + 9 + 16) / 4 = 7.5
    assert object_loss(EPS_HAT, EPS, DIAG, alpha=1.0, weighting=weighting).item() == pytest.approx(7.5, abs=1e-6)
    # alpha = 0: only the mask, = the defect loss value 8.5
    assert object_loss(EPS_HAT, EPS, DIAG, alpha=0.0, weighting=weighting).item() == pytest.approx(8.5, abs=1e-6)


def test_object_loss_unknown_weighting_and_config_agree():
    from defectfill.diffusion.config import OBJECT_LOSS_WEIGHTINGS as CONFIG_WEIGHTINGS
    from defectfill.diffusion.losses import OBJECT_LOSS_WEIGHTINGS

    with pytest.raises(ValueError, match="weighting"):
        object_loss(EPS_HAT, EPS, DIAG, weighting="squared")
    assert CONFIG_WEIGHTINGS == OBJECT_LOSS_WEIGHTINGS == ("paper", "alpha")


# ---------------------------------------------------------------- attention / total


def test_attention_loss_is_plain_mse():
    a = t([[[[0.5, 0.2], [0.1, 0.9]]]])
    # diffs to M: 0.5, 0.2, 0.1, 0.1 -> squares 0.25 + 0.04 + 0.01 + 0.01 = 0.31 -> / 4 = 0.0775
    assert attention_loss(a, DIAG).item() == pytest.approx(0.0775, abs=1e-7)
    assert attention_loss(DIAG, DIAG).item() == 0.0


def test_total_loss_defaults_and_custom_lambdas():
    l_def, l_obj, l_attn = t(2.0), t(3.0), t(4.0)
    # 0.5*2 + 0.2*3 + 0.05*4 = 1 + 0.6 + 0.2 = 1.8
    assert total_loss(l_def, l_obj, l_attn).item() == pytest.approx(1.8, abs=1e-6)
    # 1*2 + 0*3 + 0.5*4 = 4
    assert total_loss(l_def, l_obj, l_attn, lambda_def=1.0, lambda_obj=0.0, lambda_attn=0.5).item() == pytest.approx(4.0)


# ---------------------------------------------------------------- latent_mask


def test_latent_mask_keeps_single_pixel_defect():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 11, 3] = 1.0  # row 11 -> latent row 11 // 8 = 1, col 3 -> latent col 0
    out = latent_mask(mask, (2, 2))
    assert out.shape == (1, 1, 2, 2)
    assert out.tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]


def test_latent_mask_batch_and_uint8_input():
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    mask[0, 0, 0, 15] = 1  # item 0: top-right cell
    mask[1, 0, 8, 8] = 1  # item 1: bottom-right cell (first pixel of that cell)
    out = latent_mask(mask, (2, 2))
    assert out.dtype == torch.float32
    assert out.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]]
