"""`evaluate` metrics for SAM; each module here also loads on its own with `evaluate.load(path)`."""

from .sam_segmentation import SamSegmentation

__all__ = ["SamSegmentation"]
