"""`import sam_hf` installs `SamHFMaskGenerationPipeline` as transformers' `"mask-generation"` task.

Kept apart from `mask_generation.py`, which travels as remote code and so may not import `sam_hf.hub`.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForMaskGeneration
from transformers.pipelines import PIPELINE_REGISTRY

from ..hub.loading import load_processor
from ..modeling import SamHFConfig, SamHFModel
from ..processing_sam_hf import SamHFProcessor
from .mask_generation import TASK, SamHFMaskGenerationPipeline

__all__ = ["register_mask_generation_pipeline"]


def register_mask_generation_pipeline() -> None:
    """Make `transformers.pipeline("mask-generation", ...)` build `SamHFMaskGenerationPipeline` for sam_hf models.

    Registers `SamHFModel` as an `AutoModelForMaskGeneration` (the model class the task loads) and replaces the
    task's pipeline class, keeping transformers' default model and task type; other models still get
    transformers' `MaskGenerationPipeline` (see `SamHFMaskGenerationPipeline.__new__`). The registry entry is
    replaced in place rather than through `PIPELINE_REGISTRY.register_pipeline`, which logs an "Overwriting"
    warning at every import. A model given without its processor gets the one `sam_hf.hub.load_processor` finds.

    The installed `SamHFConfig` then drops the `custom_pipelines` of a saved config (the same pipeline saved as
    remote code): transformers' `pipeline` demands `trust_remote_code=True` for any task a config names there.
    """
    AutoModelForMaskGeneration.register(SamHFConfig, SamHFModel, exist_ok=True)
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**entry, "impl": SamHFMaskGenerationPipeline}
    SamHFMaskGenerationPipeline.find_processor = staticmethod(_saved_processor)
    SamHFConfig.pipelines_registered = True


def _saved_processor(model: Any) -> SamHFProcessor:
    """The processor saved with the model named `model.name_or_path`, else the one matching its config."""
    name = getattr(model, "name_or_path", None)
    return load_processor(name, model.config) if name else SamHFProcessor.from_model_config(model.config)
