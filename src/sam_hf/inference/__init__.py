"""Inference on top of the model: the predictor (one image, cached embedding, many prompts), the automatic mask
generator (a point grid through the predictor) and the data engine (`annotate`: the generator over a folder)."""

from .automatic_mask_generator import SamAutomaticMaskGenerator
from .predictor import SamPredictor

__all__ = ["SamAutomaticMaskGenerator", "SamPredictor"]
