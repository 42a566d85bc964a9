"""defectfill: realistic defect images for industrial visual inspection."""

__version__ = "0.1.0"
