"""Detector training/evaluation on the synthesized datasets (ultralytics RT-DETR), offline only."""

from defectfill.detect.offline import check_dataset_offline, prepare_ultralytics_offline

__all__ = ["check_dataset_offline", "prepare_ultralytics_offline"]
