"""The Hub side: resolving and loading any model form (`loading`), saving a model with its processor in any
format (`saving`), model cards (`cards`), pushes (`push`)."""

from .cards import CARD_MARKER, TRAINING_SUMMARY_NAME, build_model_card, card_template_path
from .loading import (
    MODEL_KINDS,
    ResolvedModel,
    adapter_base_model,
    load_model,
    load_pretrained,
    load_processor,
    locate_model,
    portable_model_name,
)
from .push import HubPushError, PushResult, build_commit_operations, push_to_hub
from .saving import SAVE_FORMATS, save_model

__all__ = [
    "CARD_MARKER",
    "MODEL_KINDS",
    "SAVE_FORMATS",
    "TRAINING_SUMMARY_NAME",
    "HubPushError",
    "PushResult",
    "ResolvedModel",
    "adapter_base_model",
    "build_commit_operations",
    "build_model_card",
    "card_template_path",
    "load_model",
    "load_pretrained",
    "load_processor",
    "locate_model",
    "portable_model_name",
    "push_to_hub",
    "save_model",
]
