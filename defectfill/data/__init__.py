"""Reference data: loading, defect crops, masks and a procedural demo dataset."""

from defectfill.data.datasets import (
    IMAGE_EXTS,
    DefectCropSampler,
    ReferenceDataset,
    ReferenceSample,
    load_reference_dataset,
    sample_defect_crop,
)
from defectfill.data.fabric import fabric_mask, load_roi, off_fabric_fraction, valid_region
from defectfill.data.masks import binarize_mask, mask_components, mask_to_boxes, random_box_mask, random_box_masks
from defectfill.data.placement import (
    NoFabricPlacement,
    Placement,
    auto_masks_for,
    place_on_fabric,
    place_reference_mask,
)
from defectfill.data.procedural import DEFECT_KINDS, make_woven_dataset

__all__ = [
    "DEFECT_KINDS",
    "IMAGE_EXTS",
    "DefectCropSampler",
    "NoFabricPlacement",
    "Placement",
    "ReferenceDataset",
    "ReferenceSample",
    "auto_masks_for",
    "binarize_mask",
    "fabric_mask",
    "load_reference_dataset",
    "load_roi",
    "make_woven_dataset",
    "mask_components",
    "mask_to_boxes",
    "off_fabric_fraction",
    "place_on_fabric",
    "place_reference_mask",
    "random_box_mask",
    "random_box_masks",
    "sample_defect_crop",
    "valid_region",
]
