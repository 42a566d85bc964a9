"""GAN losses (gan_baselines/losses.py) against hand-computed values and analytic gradients."""

import math

import numpy as np
import pytest
import torch

from gan_baselines.losses import (
    bce_d_loss,
    bce_g_loss,
    cosine_schedule,
    discriminator_loss,
    generator_loss,
    relativistic_d_loss,
    relativistic_g_loss,
    zero_centered_gradient_penalty,
)

LN2 = math.log(2.0)


def softplus(z: float) -> float:
    """log(1 + e^z), by hand."""
    return math.log(1.0 + math.exp(z))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---- BCE (Goodfellow et al. 2014, non-saturating) ----

def test_bce_losses_at_zero_logits_are_log2():
    # D(x) = D(G(z)) = 0: softplus(0) + softplus(0) = 2 ln 2, and G's loss is ln 2.
    assert bce_d_loss(t([0.0, 0.0]), t([0.0, 0.0])).item() == pytest.approx(2 * LN2, abs=1e-12)
    assert bce_g_loss(t([0.0, 0.0, 0.0])).item() == pytest.approx(LN2, abs=1e-12)


def test_bce_d_loss_matches_hand_softplus():
    real, fake = [2.0, -1.0, 0.5], [0.3, -2.0, 1.0]
    expected = sum(softplus(-r) + softplus(f) for r, f in zip(real, fake)) / 3
    assert bce_d_loss(t(real), t(fake)).item() == pytest.approx(expected, abs=1e-12)
    # a confident, correct D has a loss near 0; a confidently wrong one a large loss (≈ 2·10)
    assert bce_d_loss(t([20.0]), t([-20.0])).item() < 1e-8
    assert bce_d_loss(t([-10.0]), t([10.0])).item() == pytest.approx(2 * softplus(10.0), abs=1e-9)


def test_bce_g_loss_matches_hand_softplus():
    fake = [0.3, -2.0, 1.0, 4.0]
    expected = sum(softplus(-f) for f in fake) / 4
    assert bce_g_loss(t(fake)).item() == pytest.approx(expected, abs=1e-12)


# ---- relativistic pairing (R3GAN) ----

def test_relativistic_losses_match_hand_values_and_are_not_symmetric():
    real, fake = [2.0, 0.5, -1.0], [-1.0, 1.0, -1.0]
    # D: softplus(-(r - f)) with r - f = 3, -0.5, 0  →  softplus(-3), softplus(0.5), softplus(0)
    d_expected = (softplus(-3.0) + softplus(0.5) + LN2) / 3
    # G: softplus(-(f - r)) with f - r = -3, 0.5, 0  →  softplus(3), softplus(-0.5), softplus(0)
    g_expected = (softplus(3.0) + softplus(-0.5) + LN2) / 3
    assert relativistic_d_loss(t(real), t(fake)).item() == pytest.approx(d_expected, abs=1e-12)
    assert relativistic_g_loss(t(real), t(fake)).item() == pytest.approx(g_expected, abs=1e-12)
    assert d_expected != pytest.approx(g_expected)


def test_relativistic_loss_depends_only_on_the_logit_difference():
    real, fake = t([2.0, 0.5]), t([-1.0, 1.0])
    shifted = relativistic_d_loss(real + 7.0, fake + 7.0).item()
    assert shifted == pytest.approx(relativistic_d_loss(real, fake).item(), abs=1e-12)


# ---- zero-centred gradient penalties R1 / R2 ----

def quadratic_critic(w: torch.Tensor):
    """critic(x) = Σ_pixels w ⊙ x², one logit per sample; ∇_x = 2 w x."""
    return lambda x: (w * x.square()).flatten(1).sum(1)


def analytic_penalty(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """||∇_x critic||² per sample for the quadratic critic: Σ (2 w x)², in numpy."""
    return ((2 * w[None] * x) ** 2).reshape(len(x), -1).sum(1)


@pytest.fixture
def quadratic_setup():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 3, 3))
    real = rng.normal(size=(4, 2, 3, 3))
    fake = rng.normal(size=(4, 2, 3, 3))
    return w, real, fake


def test_penalty_matches_analytic_gradient_norm(quadratic_setup):
    w, real, _ = quadratic_setup
    x = torch.tensor(real, requires_grad=True)
    got = zero_centered_gradient_penalty(x, quadratic_critic(torch.tensor(w))(x))
    assert got.shape == (4,)
    np.testing.assert_allclose(got.detach().numpy(), analytic_penalty(w, real), rtol=1e-12)


def test_penalty_of_a_linear_critic_is_the_squared_weight_norm_everywhere():
    a = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)  # critic(x) = Σ a ⊙ x
    x = torch.randn(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    got = zero_centered_gradient_penalty(x, (a * x).flatten(1).sum(1))
    np.testing.assert_allclose(got.detach().numpy(), [1 + 4 + 0.25 + 9] * 3, rtol=1e-12)


def test_penalty_is_differentiable_second_order(quadratic_setup):
    """create_graph: P = Σ 4 w² x²  ⇒  ∂P/∂x = 8 w² x and ∂P/∂w = 8 w x² (summed over samples)."""
    w_np, real, _ = quadratic_setup
    w = torch.tensor(w_np, requires_grad=True)
    x = torch.tensor(real, requires_grad=True)
    zero_centered_gradient_penalty(x, quadratic_critic(w)(x)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 8 * w_np[None] ** 2 * real, rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), (8 * w_np[None] * real**2).sum(0), rtol=1e-12)


def test_r3gan_discriminator_loss_is_adv_plus_half_gamma_r1_r2(quadratic_setup):
    w_np, real_np, fake_np = quadratic_setup
    w = torch.tensor(w_np, requires_grad=True)
    gamma = 0.7
    loss, info = discriminator_loss("r3gan", quadratic_critic(w), torch.tensor(real_np), torch.tensor(fake_np), gamma)

    def logits(x):
        return (w_np[None] * x**2).reshape(len(x), -1).sum(1)

    adv = np.mean([softplus(-(r - f)) for r, f in zip(logits(real_np), logits(fake_np))])
    r1 = analytic_penalty(w_np, real_np).mean()
    r2 = analytic_penalty(w_np, fake_np).mean()
    assert loss.item() == pytest.approx(adv + gamma / 2 * (r1 + r2), rel=1e-10)
    assert info["loss_d_adv"] == pytest.approx(adv, rel=1e-10)
    assert info["r1"] == pytest.approx(r1, rel=1e-10)
    assert info["r2"] == pytest.approx(r2, rel=1e-10)
    assert info["gamma"] == gamma and info["loss_d"] == pytest.approx(loss.item())
    # the penalty term reaches D's weights: its share of ∂loss/∂w is γ/2 · mean_i 8 w x_i² (real + fake)
    loss.backward()
    without_penalty_w = torch.tensor(w_np, requires_grad=True)
    adv_only, _ = discriminator_loss("r3gan", quadratic_critic(without_penalty_w), torch.tensor(real_np),
                                     torch.tensor(fake_np), 0.0)
    adv_only.backward()
    penalty_grad = gamma / 2 * (8 * w_np[None] * real_np**2).mean(0) + gamma / 2 * (8 * w_np[None] * fake_np**2).mean(0)
    np.testing.assert_allclose(w.grad.numpy() - without_penalty_w.grad.numpy(), penalty_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["bce", "r3gan"])
def test_discriminator_loss_does_not_reach_the_generator(kind):
    g_param = torch.tensor(2.0, requires_grad=True)
    fake = g_param * torch.ones(3, 4)
    real = torch.ones(3, 4)
    a = torch.tensor([0.5, -1.0, 2.0, 1.0], requires_grad=True)
    loss, _ = discriminator_loss(kind, lambda x: (x * a).sum(1), real, fake, gamma=1.0)
    loss.backward()
    assert g_param.grad is None
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_bce_discriminator_loss_matches_hand_values():
    a = torch.tensor([1.0, -1.0], dtype=torch.float64)  # critic(x) = x·a
    real, fake = t([[2.0, 1.0], [0.0, 0.5]]), t([[1.0, 1.0], [-1.0, 2.0]])
    # real logits 1, -0.5; fake logits 0, -3
    expected = (softplus(-1.0) + softplus(0.0) + softplus(0.5) + softplus(-3.0)) / 2
    loss, info = discriminator_loss("bce", lambda x: x @ a, real, fake)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert info == {"loss_d": pytest.approx(expected, abs=1e-12)}


# ---- generator losses ----

def test_generator_loss_bce_value_and_gradient():
    a = t([1.0, -2.0])  # critic(x) = x·a
    fake = t([[0.5, 0.25], [1.0, -1.0]]).requires_grad_(True)  # logits 0, 3
    loss = generator_loss("bce", lambda x: x @ a, t([[9.0, 9.0]] * 2), fake)
    assert loss.item() == pytest.approx((softplus(0.0) + softplus(-3.0)) / 2, abs=1e-12)
    loss.backward()
    # d/dfake_i softplus(-a·fake_i)/B = -sigmoid(-a·fake_i) a / B
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = np.array([[-sig(0.0) * 1, -sig(0.0) * -2], [-sig(-3.0) * 1, -sig(-3.0) * -2]]) / 2
    np.testing.assert_allclose(fake.grad.numpy(), expected, rtol=1e-12)


def test_generator_loss_r3gan_value_and_real_is_detached():
    a = t([1.0, -2.0])
    real = t([[1.0, 0.0], [0.0, 0.5]]).requires_grad_(True)  # logits 1, -1
    fake = t([[0.5, 0.25], [1.0, -1.0]]).requires_grad_(True)  # logits 0, 3
    loss = generator_loss("r3gan", lambda x: x @ a, real, fake)
    # softplus(-(f - r)): f - r = -1, 4
    assert loss.item() == pytest.approx((softplus(1.0) + softplus(-4.0)) / 2, abs=1e-12)
    loss.backward()
    assert real.grad is None
    assert fake.grad is not None


@pytest.mark.parametrize("fn", [discriminator_loss, generator_loss])
def test_unknown_kind_raises_value_error_naming_it(fn):
    with pytest.raises(ValueError, match="wgan"):
        fn("wgan", lambda x: x.sum(1), torch.zeros(2, 2), torch.zeros(2, 2))


# ---- γ schedule ----

def test_cosine_schedule_endpoints_midpoint_and_clamping():
    start, end, total = 1.0, 0.1, 100
    assert cosine_schedule(0, total, start, end) == pytest.approx(start)
    assert cosine_schedule(total, total, start, end) == pytest.approx(end)
    assert cosine_schedule(50, total, start, end) == pytest.approx((start + end) / 2)
    # t = 1/4: end + (start − end)/2 · (1 + cos(π/4)) = 0.1 + 0.45 · 1.70710678…
    assert cosine_schedule(25, total, start, end) == pytest.approx(0.868198052, abs=1e-9)
    assert cosine_schedule(10 * total, total, start, end) == pytest.approx(end)
    assert cosine_schedule(-5, total, start, end) == pytest.approx(start)
    values = [cosine_schedule(s, total, start, end) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert cosine_schedule(0, 0, start, end) == pytest.approx(start)  # total 0 does not divide by zero
