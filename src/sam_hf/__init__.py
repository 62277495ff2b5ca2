"""sam_hf: Segment Anything as a first-class Hugging Face model."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoProcessor

from .build_sam import (
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    build_sam_vit_tiny,
    sam_model_registry,
)
from .inference import SamAutomaticMaskGenerator, SamPredictor
from .modeling import SAM_HF_PRESETS, SamHFConfig, SamHFModel, SamHFOutput
from .pipelines import SamHFMaskGenerationPipeline, register_mask_generation_pipeline
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
# transformers.pipeline("mask-generation", model=<a sam_hf model>) then runs SamAutomaticMaskGenerator.
register_mask_generation_pipeline()

__all__ = [
    "SAM_HF_PRESETS",
    "SamAutomaticMaskGenerator",
    "SamHFConfig",
    "SamHFMaskGenerationPipeline",
    "SamHFModel",
    "SamHFOutput",
    "SamHFProcessor",
    "SamPredictor",
    "build_sam",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "build_sam_vit_t",
    "build_sam_vit_tiny",
    "sam_model_registry",
]
__version__ = "0.1.0"
