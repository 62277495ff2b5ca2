"""`sam-hf convert IN OUT [--to sam_hf|transformers|meta]`: rewrite a SAM checkpoint in another format.

IN is anything `SamHFModel.from_pretrained` reads (a sam_hf folder or Hub repo, a transformers `SamModel` or
`SamHQModel` folder or Hub repo, an official `.pth`: Meta's SAM, MobileSAM, SAM-HQ). OUT is a folder for `sam_hf`
and `transformers`, a file for `meta` (the official layout of the model's own family). Tensors are copied bit for
bit, so a model fine-tuned here runs in transformers (`SamModel.from_pretrained(OUT)`,
`SamProcessor.from_pretrained(OUT)`; `SamHQModel` and `SamHQProcessor` for SAM-HQ) and in the official code
(`sam_model_registry[variant](checkpoint=OUT)` of `segment_anything`, `mobile_sam` or `segment_anything_hq`).
transformers has no TinyViT: MobileSAM and Light HQ-SAM convert to sam_hf and meta only. The folders hold the
processor config too, at the model's input size (`sam_hf.hub.save_model`).
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a SAM checkpoint between sam_hf, transformers and official formats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", metavar="IN", help="sam_hf / transformers folder or Hub id, or official .pth file"
    )
    parser.add_argument(
        "output", metavar="OUT", help="output folder (sam_hf, transformers) or .pth file (meta)"
    )
    parser.add_argument(
        "--to",
        choices=("sam_hf", "transformers", "meta"),
        default="sam_hf",
        help="output format (default: sam_hf)",
    )
    parser.add_argument(
        "--preset",
        help="architecture preset for a Meta file whose decoder does not have SAM's 8 heads (e.g. tiny); "
        "by default it is read from the tensor shapes",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import load_processor, locate_model, save_model
    from ..modeling import SamHFConfig, SamHFModel

    # Resolved once: an unknown name or unreachable Hub fails here, before any download is tried.
    resolved = locate_model(args.source)
    kwargs = {"config": SamHFConfig.from_preset(args.preset)} if args.preset else {}
    source = resolved.checkpoint or resolved.name
    model = SamHFModel.from_pretrained(source, dtype="auto", **resolved.hub_kwargs, **kwargs)
    save_model(model, args.output, load_processor(resolved, model.config), format=args.to)
    print(f"wrote {args.to} checkpoint {args.output} from {args.source}")
    return 0
