"""`from sam_hf.utils.transforms import ResizeLongestSide`, the official `segment_anything.utils.transforms`
path; the class lives in `sam_hf.inference.predictor`."""

from ..inference.predictor import ResizeLongestSide

__all__ = ["ResizeLongestSide"]
