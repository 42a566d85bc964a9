"""Generator benchmark metrics, offline: Fréchet distance / KID (distribution) and masked IC-LPIPS (diversity).

By default every perceptual network is the pretrained ImageNet EfficientNet-Lite0 backbone
(:mod:`defectfill.backbones`): pooled features for the Fréchet distance and KID
(:class:`BackboneFeatures`), multi-layer features for the LPIPS-style distance of IC-LPIPS
(:class:`BackbonePerceptual`). Every result states which network produced it (``extractor`` /
``standard`` / ``frechet_name`` / ``kid_name`` for the distribution metrics, ``lpips`` for
IC-LPIPS); only the standard TF-FID Inception's numbers are called FID/KID, and random networks
(random conv features, a random LPIPS backbone) are used only when asked for and say so.
"""

from defectfill.metrics.distribution import (
    DefectCrops,
    crop_around_masks,
    crop_window_around_mask,
    extract_features,
    frechet_kid,
    frechet_kid_from_features,
    image_features,
    load_dataset_crops,
    load_reference_crops,
    to_uint8_batch,
)
from defectfill.metrics.diversity import ic_lpips, masked_lpips_pairs
from defectfill.metrics.features import (
    DEFAULT_KIND,
    KINDS,
    BackboneFeatures,
    FeatureExtractor,
    FIDInceptionFeatures,
    InceptionFeatures,
    RandomConvFeatures,
    load_features,
    metric_names,
)
from defectfill.metrics.perceptual import BackbonePerceptual, layer_distance_map, unit_normalize

__all__ = [
    "DEFAULT_KIND",
    "KINDS",
    "BackboneFeatures",
    "BackbonePerceptual",
    "DefectCrops",
    "FIDInceptionFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomConvFeatures",
    "crop_around_masks",
    "crop_window_around_mask",
    "extract_features",
    "frechet_kid",
    "frechet_kid_from_features",
    "image_features",
    "ic_lpips",
    "layer_distance_map",
    "load_dataset_crops",
    "load_features",
    "load_reference_crops",
    "masked_lpips_pairs",
    "metric_names",
    "to_uint8_batch",
    "unit_normalize",
]
