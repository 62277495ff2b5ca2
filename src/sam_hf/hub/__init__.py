"""The Hub side: resolving and loading any model form (`loading`), model cards (`cards`), pushes (`push`)."""

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

__all__ = [
    "CARD_MARKER",
    "MODEL_KINDS",
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
]
