"""The pretrained backbone: ImageNet EfficientNet-Lite0 from the registry package, mapped onto timm."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectfill.backbones import CHANNELS, REDUCTIONS, Backbone, map_lite0_state_dict

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def backbone():
    return Backbone(pretrained=True)


def _as_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@pytest.mark.parametrize("name,imagenet_class", [("chelsea", 285), ("coffee", 967)])
def test_pretrained_backbone_classifies_real_photos(backbone, name, imagenet_class):
    # scikit-image's chelsea.png is a tabby (ImageNet 285, Egyptian cat), coffee.png an espresso (967)
    with torch.no_grad():
        probs = backbone.classify(_as_input(getattr(skdata, name)())).softmax(-1)[0]
    assert int(probs.argmax()) == imagenet_class
    assert float(probs[imagenet_class]) > 0.5


def test_features_are_a_pyramid_and_grey_equals_replicated_rgb(backbone):
    grey = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = backbone(grey)
        rgb = backbone(grey.expand(-1, 3, -1, -1))
    assert [f.shape[1] for f in feats] == list(CHANNELS)
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // r, 96 // r) for r in REDUCTIONS]
    for a, b in zip(feats, rgb):
        torch.testing.assert_close(a, b)


def test_frozen_backbone_stays_in_eval_mode_without_gradients(backbone):
    backbone.train()
    assert not backbone.net.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_random_backbone_is_explicit_and_differs():
    random = Backbone(pretrained=False, levels=(2,))
    assert "RANDOM" in random.name and random.channels == (40,)
    pretrained = Backbone(pretrained=True, levels=(2,))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(random(x)[0], pretrained(x)[0])


def test_mapping_refuses_a_shape_mismatch():
    source = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    target = {"b.weight": torch.zeros(3, 2), "b.bias": torch.zeros(4)}
    with pytest.raises(ValueError, match="does not fit"):
        map_lite0_state_dict(source, target)
    ok = map_lite0_state_dict(source, {"b.weight": torch.ones(3, 2), "b.bias": torch.ones(3)})
    assert list(ok) == ["b.weight", "b.bias"] and ok["b.bias"].sum() == 0
