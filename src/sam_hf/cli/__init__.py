"""`sam-hf` command line. Each subcommand is a module here with `add_parser(subparsers)`, which registers
its arguments and sets `func`; heavy imports happen inside `func` so `sam-hf --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = [
    "DEFAULT_HUB_MODEL",
    "OFFLINE_FALLBACK_MODEL",
    "add_model_arguments",
    "load_model",
    "main",
    "resolve_device",
    "resolve_model",
]

# The model a command uses without --model: SAM ViT-B when it can be had, else the model shipped in the package.
DEFAULT_HUB_MODEL = "facebook/sam-vit-base"
OFFLINE_FALLBACK_MODEL = "sam-hf-tiny"
_HUB_TIMEOUT_S = 5.0

COMMANDS: tuple[str, ...] = (
    "segment",
    "convert",
    "generate",
    "annotate",
    "finetune",
    "evaluate",
    "push",
    "demo",
)


def add_model_arguments(parser: argparse.ArgumentParser, what: str = "model", device: bool = True) -> None:
    """Register the `--model` (and, unless the command places itself, `--device`) options model commands share."""
    parser.add_argument(
        "--model",
        default=None,
        help=f"{what}: a shipped name, Hub repo id, Meta .pth, sam_hf or transformers SAM folder, PEFT adapter "
        f"folder or `sam-hf finetune` output folder; default {DEFAULT_HUB_MODEL} when it is cached or the Hub "
        f"answers, else the shipped {OFFLINE_FALLBACK_MODEL}",
    )
    if device:
        parser.add_argument(
            "--device", default=None, help="torch device (default: cuda if available, else cpu)"
        )


def resolve_model(model: str | None) -> str:
    """`--model` as given, or the default: `DEFAULT_HUB_MODEL` if it is in the local Hugging Face cache or the
    Hub answers within a few seconds (never with HF_HUB_OFFLINE=1), else `OFFLINE_FALLBACK_MODEL`, saying so."""
    if model is not None:
        return model
    from huggingface_hub import HfApi, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT_HUB_MODEL, "config.json"), str):
        return DEFAULT_HUB_MODEL
    reason = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on"):
        try:
            HfApi().model_info(DEFAULT_HUB_MODEL, timeout=_HUB_TIMEOUT_S)
            return DEFAULT_HUB_MODEL
        except Exception as error:  # any failure to reach the Hub means: use the shipped model
            reason = f"the Hub is unreachable ({type(error).__name__})"
    print(
        f"sam-hf: no --model given and {DEFAULT_HUB_MODEL} is not cached and {reason}; using the shipped "
        f"{OFFLINE_FALLBACK_MODEL} (trained on synthetic shapes only, not a substitute for SAM weights)",
        file=sys.stderr,
    )
    return OFFLINE_FALLBACK_MODEL


def load_model(model: str | None, *, merge_adapter: bool = True):
    """`--model` (or its default, `resolve_model`) loaded by `sam_hf.hub.load_model`, which prints one line
    saying what it loaded; a model argument that is no model in any form exits with a one-line error.

    Args:
        model: the `--model` argument.
        merge_adapter: fold an adapter into its base (inference); False keeps the `PeftModel`, e.g. to measure
            the base with `disable_adapter()`.

    Returns:
        `(model, processor, resolved)` as `sam_hf.hub.load_model`; the model in eval mode, on the CPU.
    """
    from ..hub import load_model as load_any_model

    try:
        loaded, processor, resolved = load_any_model(resolve_model(model), merge_adapter=merge_adapter)
    except ValueError as error:  # not a model in any form: the message lists the forms
        raise SystemExit(f"sam-hf: --model: {error}") from error
    return loaded, processor, resolved


def resolve_device(device: str | None) -> str:
    """`--device` as given, or cuda when available, else cpu."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-hf", description="Segment Anything as a Hugging Face model.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0
