"""`sam-hf export MODEL OUT_DIR --format onnx [--quantize int8] [--opset N] [--hq-token-only]`: write the image
encoder and the prompt encoder + mask decoder as ONNX files for onnxruntime.

The decoder keeps the official `segment_anything` ONNX interface (inputs image_embeddings, point_coords,
point_labels, mask_input, has_mask_input, orig_im_size; outputs masks, iou_predictions, low_res_masks), so
code written for the official ONNX model runs on it. For SAM-HQ the encoder also outputs its early feature
(intermediate_embeddings), which the decoder takes after image_embeddings. OUT_DIR/onnx_config.json says how to preprocess images
and lists every file of the export; a graph over 2 GB (ViT-H in float32) keeps its weights in one
`<graph>.onnx.data` file beside it. Files of an earlier export in OUT_DIR that this one does not write again are
removed.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import SamHFUserError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    from ..export.onnx import DEFAULT_OPSET, QUANTIZE_CHOICES

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (image encoder + prompt decoder)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="shipped name, Hub repo id, official .pth, sam_hf or transformers SAM / SAM-HQ folder, PEFT adapter "
        "folder (merged into its base) or `sam-hf finetune` output folder",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="onnxruntime dynamic quantization of both files (default: float32)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--all-masks",
        action="store_true",
        help="the decoder returns all four mask heads (official export script's default; masks[:, 0] is "
        "predict(..., multimask_output=False), e.g. the single-mask answer for a box alone) instead of one mask "
        "(official notebook's export: for one click or a box alone the best-scored of the multimask outputs)",
    )
    parser.add_argument(
        "--hq-token-only",
        action="store_true",
        help="SAM-HQ: the decoder returns the HQ mask alone instead of SAM's mask plus the HQ mask "
        "(segment_anything_hq's SamOnnxModel option); one mask, so not with --all-masks",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx
    from ..export.onnx import DATA_SUFFIX

    try:
        result = export_onnx(
            args.model,
            args.out_dir,
            quantize=args.quantize,
            opset=args.opset,
            return_single_mask=not args.all_masks,
            hq_token_only=args.hq_token_only,
        )
    except ImportError as error:  # the optional dependencies are missing: say which extra to install
        raise SamHFUserError(str(error)) from error
    kind = f"{result.quantize} " if result.quantize else ""
    data = [str(path) for path in result.files if path.name.endswith(DATA_SUFFIX)]
    weights = f" (weights in {' and '.join(data)})" if data else ""
    print(
        f"wrote {kind}ONNX files {result.encoder} and {result.decoder}{weights}; preprocessing and the list "
        f"of files in {result.config}"
    )
    return 0
