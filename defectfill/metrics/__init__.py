"""Generator benchmark metrics: FID / KID (distribution) and masked IC-LPIPS (diversity), offline.

Every result states which network produced it (``extractor`` / ``standard`` for FID/KID,
``lpips`` for IC-LPIPS), so offline fallbacks (random conv features, random LPIPS backbone)
are never mistaken for the standard metrics.
"""

from defectfill.metrics.distribution import (
    DefectCrops,
    crop_around_masks,
    crop_window_around_mask,
    extract_features,
    fid_kid,
    load_dataset_crops,
    load_reference_crops,
    to_uint8_batch,
)
from defectfill.metrics.diversity import ic_lpips, masked_lpips_pairs
from defectfill.metrics.features import (
    KINDS,
    FeatureExtractor,
    FIDInceptionFeatures,
    InceptionFeatures,
    RandomConvFeatures,
    load_features,
)

__all__ = [
    "KINDS",
    "DefectCrops",
    "FIDInceptionFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomConvFeatures",
    "crop_around_masks",
    "crop_window_around_mask",
    "extract_features",
    "fid_kid",
    "ic_lpips",
    "load_dataset_crops",
    "load_features",
    "load_reference_crops",
    "masked_lpips_pairs",
    "to_uint8_batch",
]
