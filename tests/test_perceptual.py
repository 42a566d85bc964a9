"""LPIPS-style perceptual distance on the pretrained EfficientNet-Lite0 (Zhang et al. 2018 eq. 1, w_l = 1)."""

import numpy as np
import pytest
import torch
from netguard import refuse_network

from defectfill.backbones import PRETRAINED_NAME, Backbone
from defectfill.metrics import BackbonePerceptual, layer_distance_map, unit_normalize


@pytest.fixture(scope="module")
def model():
    mp = pytest.MonkeyPatch()
    refuse_network(mp)
    try:
        return BackbonePerceptual()
    finally:
        mp.undo()


def _images(n, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_unit_normalize_and_layer_distance_by_hand():
    def feat(*vectors):  # one position per vector: (1, C, 1, P)
        return torch.tensor(vectors, dtype=torch.float64).T[None, :, None, :]

    torch.testing.assert_close(unit_normalize(feat([3.0, 4.0])), feat([0.6, 0.8]))
    fx = feat([3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0])
    fy = feat([6.0, 8.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 0.0])
    # same direction -> 0 (scale does not matter); orthogonal -> 2; opposite -> 4; zero vs unit -> 1
    expected = torch.tensor([0.0, 2.0, 4.0, 1.0], dtype=torch.float64).view(1, 1, 1, 4)
    torch.testing.assert_close(layer_distance_map(fx, fy), expected)
    with pytest.raises(ValueError, match="one shape"):
        layer_distance_map(fx, fy[:, :1])


def test_full_image_mean_is_eq1_on_independent_backbone_features(model):
    x, y = _images(2, 64, seed=1), _images(2, 64, seed=2)
    maps = model(x, y)
    assert maps.shape == (2, 1, 64, 64) and (maps >= 0).all()
    with torch.no_grad():
        fx, fy = Backbone(pretrained=True)(x), Backbone(pretrained=True)(y)
    expected = np.zeros(2)
    for a, b in zip(fx, fy):  # eq. 1: sum over layers of the spatial mean of ||unit(a) - unit(b)||^2
        a, b = a.double().numpy(), b.double().numpy()
        a = a / (np.sqrt((a**2).sum(1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt((b**2).sum(1, keepdims=True)) + 1e-10)
        expected += ((a - b) ** 2).sum(1).mean(axis=(1, 2))
    # sizes divisible by 32: every bilinear upsampling factor is an integer, which keeps the mean exactly
    np.testing.assert_allclose(maps.double().mean(dim=(1, 2, 3)).numpy(), expected, rtol=1e-4)


def test_identity_zero_layers_add_and_conventions_agree(model):
    x, y = _images(3, 64, seed=3), _images(1, 64, seed=4)
    assert model(x, x).abs().max() == 0
    one = model(x, y)  # a single reference image is broadcast
    torch.testing.assert_close(one, model(x, y.expand(3, -1, -1, -1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one, model(x * 2 - 1, y * 2 - 1, normalize=False), rtol=1e-5, atol=1e-6)
    grey_x, grey_y = x[:, :1], y[:, :1]
    torch.testing.assert_close(model(grey_x, grey_y), model(grey_x.expand(-1, 3, -1, -1), grey_y.expand(-1, 3, -1, -1)))
    parts = [BackbonePerceptual(levels=(i,))(x, y) for i in range(5)]  # eq. 1 is a sum over layers
    torch.testing.assert_close(sum(parts), one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1 or 3"):
        model(x, _images(2, 64))


def test_pretrained_by_default_random_only_when_asked(model):
    assert model.spatial and not model.training and not any(p.requires_grad for p in model.parameters())
    assert PRETRAINED_NAME in model.description and "RANDOM" not in model.description
    assert model.description.startswith("lpips-lite0") and "strides 2, 4, 8, 16, 32" in model.description
    random = BackbonePerceptual(pretrained=False)
    assert "RANDOM" in random.description
    x, y = _images(1, 64, seed=5), _images(1, 64, seed=6)
    assert not torch.allclose(random(x, y), model(x, y))
