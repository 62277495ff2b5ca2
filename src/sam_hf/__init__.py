"""sam_hf: Segment Anything as a first-class Hugging Face model."""

from transformers import AutoConfig, AutoModel

from .automatic_mask_generator import SamAutomaticMaskGenerator
from .modeling import SAM_HF_PRESETS, SamHFConfig, SamHFModel, SamHFOutput
from .predictor import SamPredictor
from .processing_sam_hf import SamHFProcessor

AutoConfig.register("sam_hf", SamHFConfig)
AutoModel.register(SamHFConfig, SamHFModel)

__all__ = [
    "SAM_HF_PRESETS",
    "SamAutomaticMaskGenerator",
    "SamHFConfig",
    "SamHFModel",
    "SamHFOutput",
    "SamHFProcessor",
    "SamPredictor",
]
__version__ = "0.1.0"
