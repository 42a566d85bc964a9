"""Copy-paste floor baseline: pastes a real reference defect onto the mask (no learning). The placing
and blending functions: model.py; the `Generator` adapter `CopyPasteGenerator`: generator.py."""

from gan_baselines.copy_paste.generator import CopyPasteConfig, CopyPasteGenerator

__all__ = ["CopyPasteConfig", "CopyPasteGenerator"]
