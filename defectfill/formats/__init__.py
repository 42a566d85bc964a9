"""File formats read and written by defectfill: one reader per format (see `images`)."""
