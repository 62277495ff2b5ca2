"""transformers pipelines for sam_hf models: `pipeline("mask-generation", model=...)` runs sam_hf's generator."""

from .mask_generation import SamHFMaskGenerationPipeline
from .registration import register_mask_generation_pipeline

__all__ = ["SamHFMaskGenerationPipeline", "register_mask_generation_pipeline"]
