"""`sam-hf` command line. Each subcommand is a module here with `add_parser(subparsers)`, which registers
its arguments and sets `func`; heavy imports happen inside `func` so `sam-hf --help` stays fast.

Errors the user can act on are reported by `main` in one line, `sam-hf COMMAND: error: ...`, with exit code 2
for bad input (a missing or unreadable file, a bad value, an unavailable device) and 1 for other failures of
the environment (permissions, disk, network); Ctrl-C exits with 130. Any other exception is a bug and keeps
its traceback, as do all of them with `--debug` or `SAM_HF_DEBUG=1`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hub import ResolvedModel

__all__ = [
    "DEFAULT_HUB_MODEL",
    "OFFLINE_FALLBACK_MODEL",
    "SamHFUserError",
    "add_model_arguments",
    "load_model",
    "main",
    "resolve_device",
    "resolve_model",
    "user_input",
]

# The model a command uses without --model: SAM ViT-B when it can be had, else the model shipped in the package.
DEFAULT_HUB_MODEL = "facebook/sam-vit-base"
OFFLINE_FALLBACK_MODEL = "sam-hf-tiny"

COMMANDS: tuple[str, ...] = (
    "segment",
    "convert",
    "generate",
    "annotate",
    "finetune",
    "evaluate",
    "label",
    "push",
    "demo",
    "export",
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


def resolve_model(model: str | ResolvedModel | None) -> ResolvedModel:
    """`--model` (or its default) resolved once by `sam_hf.hub.locate_model`, for the loaders to take as it is.

    The default is `DEFAULT_HUB_MODEL` when the resolver can have it (the Hub answers, or it is in the local
    Hub cache), else `OFFLINE_FALLBACK_MODEL`, saying why. A model argument that is no model in any form is
    refused with a one-line error listing the forms.
    """
    from ..hub import locate_model

    try:
        return locate_model(DEFAULT_HUB_MODEL if model is None else model)
    except ValueError as error:
        if model is not None:  # the message lists the forms
            raise SamHFUserError(f"--model: {error}") from error
        reason = error
    print(
        f"sam-hf: no --model given and {reason}; using the shipped {OFFLINE_FALLBACK_MODEL} (trained on "
        "synthetic shapes only, not a substitute for SAM weights)",
        file=sys.stderr,
    )
    return locate_model(OFFLINE_FALLBACK_MODEL)


class SamHFUserError(ValueError):
    """Bad input found by a command (a missing prompt, a device this machine lacks, a file it cannot read),
    reported by `main` as one line with exit code 2."""


@contextlib.contextmanager
def user_input(what: str) -> Iterator[None]:
    """Report an `OSError` or `ValueError` raised in the block as bad input naming `what` (e.g. "IMAGE
    photo.jpg"), for errors that do not name it themselves (PIL's "image file is truncated")."""
    try:
        yield
    except (OSError, ValueError) as error:
        # A system error's own message would repeat the file name that `what` gives.
        reason = error.strerror if isinstance(error, OSError) and error.strerror else _describe(error)
        raise SamHFUserError(f"cannot read {what}: {reason}") from error


def load_model(model: str | ResolvedModel | None, *, merge_adapter: bool = True):
    """`--model` (or its default), resolved by `resolve_model` unless it already was, loaded by
    `sam_hf.hub.load_model`, which prints one line saying what it loaded.

    Args:
        model: the `--model` argument, or what `resolve_model` made of it.
        merge_adapter: fold an adapter into its base (inference); False keeps the `PeftModel`, e.g. to measure
            the base with `disable_adapter()`.

    Returns:
        `(model, processor, resolved)` as `sam_hf.hub.load_model`; the model in eval mode, on the CPU.
    """
    from ..hub import load_model as load_any_model

    resolved = resolve_model(model)
    try:
        return load_any_model(resolved, merge_adapter=merge_adapter)
    except ValueError as error:  # e.g. a cached repo lacking a file, or weights that do not fit
        raise SamHFUserError(f"--model: {error}") from error


def resolve_device(device: str | None) -> str:
    """`--device` as given, or cuda when available, else cpu; a device this machine lacks is refused here,
    before any model is loaded."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise SamHFUserError(f"--device must be a torch device such as cpu or cuda, got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SamHFUserError(
                f"--device {device}: no CUDA GPU is available to torch (torch.cuda.is_available() is False); "
                "use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise SamHFUserError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SamHFUserError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-hf",
        description="Segment Anything as a Hugging Face model.",
        epilog="Errors are reported in one line; --debug (or SAM_HF_DEBUG=1) shows the traceback instead.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    for subparser in subparsers.choices.values():
        # SUPPRESS: a subcommand's default must not overwrite `sam-hf --debug COMMAND`.
        subparser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the module docstring for errors)."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SAM_HF_DEBUG", "0").lower() in ("1", "true", "yes", "on")
    prefix = f"sam-hf {args.command}"
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        hint = getattr(args, "interrupt_hint", None)
        print(f"{prefix}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except Exception as error:
        exit_code = _exit_code(error)
        if debug or exit_code is None:
            raise
        message = _describe(error)
        if isinstance(error, TypeError):  # in Python most often a bug rather than bad input
            message += " (rerun with --debug for the traceback)"
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return exit_code


def _exit_code(error: Exception) -> int | None:
    """2 for bad input, 1 for another failure the user can act on, None for a bug (keep the traceback)."""
    if isinstance(error, (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return 2
    if isinstance(error, OSError):
        from PIL import UnidentifiedImageError

        return 2 if isinstance(error, UnidentifiedImageError) else 1
    return None


def _describe(error: BaseException) -> str:
    """The error's message on one line; `strerror: filename` for a system error on a file."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    text = " ".join(str(error).split())
    return text or type(error).__name__
