"""`sam-hf generate`: automatic masks for one image -> COCO RLE JSON and an overlay PNG."""

from __future__ import annotations

import argparse
from typing import Any

from . import add_model_arguments, load_model, resolve_device

__all__ = ["add_generator_arguments", "add_parser", "generator_kwargs"]


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """`SamAutomaticMaskGenerator` options (defaults as the official generator)."""
    group = parser.add_argument_group("mask generation")
    group.add_argument("--points-per-side", type=int, default=32, help="grid of prompts per image side")
    group.add_argument("--points-per-batch", type=int, default=64, help="prompts decoded per model call")
    group.add_argument(
        "--pred-iou-thresh", type=float, default=0.88, help="keep masks above this predicted IoU"
    )
    group.add_argument(
        "--stability-score-thresh", type=float, default=0.95, help="keep masks with at least this stability"
    )
    group.add_argument("--box-nms-thresh", type=float, default=0.7, help="box IoU for duplicate removal")
    group.add_argument(
        "--crop-n-layers", type=int, default=0, help="also run on crops: layer i has 4**i crops"
    )
    group.add_argument(
        "--min-mask-region-area", type=int, default=0, help="fill holes / drop islands smaller than this"
    )
    group.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="fp32 matches the official generator; bf16/fp16 run the encoder and decoder in that dtype, ~2x faster on CPU",
    )


def generator_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "crop_n_layers": args.crop_n_layers,
        "min_mask_region_area": args.min_mask_region_area,
        "precision": args.precision,
    }


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="automatic masks for one image",
        description="Segment everything in IMAGE with a grid of point prompts; write masks.json (one record per "
        "mask, COCO RLE segmentation) and overlay.png (every mask in its own colour) into --out.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (any format PIL reads)")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_generator_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from sam_hf import SamAutomaticMaskGenerator

    with Image.open(args.image) as image:
        rgb = np.asarray(image.convert("RGB"))
    model = load_model(args.model)[0].to(resolve_device(args.device))
    try:
        generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **generator_kwargs(args))
    except ValueError as error:
        raise SystemExit(f"sam-hf generate: {error}") from error
    records = generator.generate(rgb)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "masks.json").write_text(json.dumps(records) + "\n")
    _overlay(rgb, records).save(out / "overlay.png")
    print(f"{len(records)} masks; wrote masks.json and overlay.png to {out}")
    return 0


def _overlay(image: Any, records: list[dict[str, Any]], alpha: float = 0.5) -> Any:
    """RGB image with every mask (COCO RLE records) tinted in its own colour, largest first."""
    import numpy as np
    from PIL import Image

    from sam_hf.inference.amg_utils import coco_decode_rle

    canvas = np.asarray(image, dtype=np.float32).copy()
    colours = np.random.default_rng(0).integers(40, 256, (max(len(records), 1), 3))
    for colour, record in zip(colours, sorted(records, key=lambda r: -r["area"]), strict=False):
        mask = coco_decode_rle(record["segmentation"])
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    return Image.fromarray(canvas.round().astype(np.uint8))
