"""sam_hf: Segment Anything as a first-class Hugging Face model."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .inference import SamAutomaticMaskGenerator, SamPredictor
from .modeling import SAM_HF_PRESETS, SamHFConfig, SamHFModel, SamHFOutput
from .processing_sam_hf import SamHFProcessor

AutoConfig.register("sam_hf", SamHFConfig)
AutoModel.register(SamHFConfig, SamHFModel)
# One class is both the processor and the image processor of a sam_hf model.
AutoProcessor.register(SamHFConfig, SamHFProcessor)
AutoImageProcessor.register(
    SamHFConfig, image_processor_classes=dict.fromkeys(("pil", "torchvision"), SamHFProcessor)
)
# save_pretrained then copies the modeling/ files next to the weights and writes config.json's auto_map, so a
# saved model loads with AutoModel.from_pretrained(path, trust_remote_code=True) where sam_hf is not installed.
# SamHFProcessor.save_pretrained does the same for the processor (sam_hf.remote_code).
SamHFConfig.register_for_auto_class()
SamHFModel.register_for_auto_class("AutoModel")

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
