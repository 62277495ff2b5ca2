"""The Hub side: loading any model form, model cards and pushes."""

from .cards import (
    CARD_MARKER,
    TRAINING_SUMMARY_NAME,
    HubPushError,
    PushResult,
    adapter_base_model,
    build_commit_operations,
    build_model_card,
    card_template_path,
    load_pretrained,
    load_processor,
    push_to_hub,
)

__all__ = [
    "CARD_MARKER",
    "TRAINING_SUMMARY_NAME",
    "HubPushError",
    "PushResult",
    "adapter_base_model",
    "build_commit_operations",
    "build_model_card",
    "card_template_path",
    "load_pretrained",
    "load_processor",
    "push_to_hub",
]
