"""The model itself: config, components and `SamHFModel`. Depends on torch and transformers only, so these
files can be saved next to weights and loaded with `trust_remote_code=True` without this package."""

from .configuration_sam_hf import SAM_HF_PRESETS, SamHFConfig
from .modeling_sam_hf import SamHFModel, SamHFOutput

__all__ = ["SAM_HF_PRESETS", "SamHFConfig", "SamHFModel", "SamHFOutput"]
