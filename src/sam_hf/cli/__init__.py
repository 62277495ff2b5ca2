"""`sam-hf` command line. Each subcommand is a module here with `add_parser(subparsers)`, which registers
its arguments and sets `func`; heavy imports happen inside `func` so `sam-hf --help` stays fast."""

from __future__ import annotations

import argparse
import importlib

__all__ = ["main"]

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-hf", description="Segment Anything as a Hugging Face model.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0
