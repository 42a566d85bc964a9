"""Reference data: loading, defect crops, masks and a procedural demo dataset."""

from defectfill.data.datasets import (
    IMAGE_EXTS,
    DefectCropSampler,
    ReferenceDataset,
    ReferenceSample,
    load_reference_dataset,
    sample_defect_crop,
)
from defectfill.data.masks import binarize_mask, mask_components, mask_to_boxes, random_box_mask, random_box_masks
from defectfill.data.placement import auto_masks_for, place_reference_mask
from defectfill.data.procedural import DEFECT_KINDS, make_woven_dataset

__all__ = [
    "DEFECT_KINDS",
    "IMAGE_EXTS",
    "DefectCropSampler",
    "ReferenceDataset",
    "ReferenceSample",
    "auto_masks_for",
    "binarize_mask",
    "load_reference_dataset",
    "make_woven_dataset",
    "mask_components",
    "mask_to_boxes",
    "place_reference_mask",
    "random_box_mask",
    "random_box_masks",
    "sample_defect_crop",
]
