"""`sam-hf generate`: automatic masks for one image -> COCO RLE JSON and an overlay PNG."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

from . import add_model_arguments, load_model, resolve_device, user_input

__all__ = ["add_generator_arguments", "add_parser", "generator_kwargs", "thresholds_text"]

# The prompt grid side of the diagnostic run behind the zero-mask hint: 1/16 of the default grid's work.
_HINT_POINTS_PER_SIDE = 8


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


def thresholds_text(args: argparse.Namespace) -> str:
    """The quality thresholds in force, as the flags that set them."""
    return f"--pred-iou-thresh {args.pred_iou_thresh} --stability-score-thresh {args.stability_score_thresh}"


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
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (shown on a terminal by default)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from sam_hf import SamAutomaticMaskGenerator
    from sam_hf.data.images import to_rgb
    from sam_hf.data.rle import rle_to_mask
    from sam_hf.visualization import draw_masks, palette_layers

    device = resolve_device(args.device)
    with user_input(f"IMAGE {args.image}"):
        rgb = to_rgb(args.image, "IMAGE")
    model = load_model(args.model)[0].to(device)
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **generator_kwargs(args))
    with _prompt_progress(generator, rgb.shape[:2], disable=True if args.no_progress else None):
        records = generator.generate(rgb)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "masks.json").write_text(json.dumps(records) + "\n")
    largest_first = sorted(records, key=lambda record: -record["area"])
    masks = (rle_to_mask(record["segmentation"]) for record in largest_first)
    draw_masks(rgb, palette_layers(masks)).save(out / "overlay.png")
    print(f"{len(records)} masks; wrote masks.json and overlay.png to {out}")
    if not records:
        print(_zero_masks_hint(model, rgb, args), file=sys.stderr)
    return 0


@contextlib.contextmanager
def _prompt_progress(generator: Any, image_size: tuple[int, int], disable: bool | None) -> Iterator[None]:
    """A progress bar over the point prompts `generator` decodes on all crops of an `(H, W)` image.

    It advances from a forward hook on the prompt encoder, which the generator calls once per decoded batch
    with that batch's prompts first in its output. `disable=None`: shown only when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    from sam_hf.inference.amg_utils import generate_crop_boxes

    _, layers = generate_crop_boxes(image_size, generator.crop_n_layers, generator.crop_overlap_ratio)
    total = sum(len(generator.point_grids[layer]) for layer in layers)
    with tqdm(total=total, desc="generate", unit="prompt", disable=disable) as bar:

        def advance(module: Any, inputs: Any, output: Any) -> None:  # None: the output is left as it is
            bar.update(output[0].shape[0])

        handle = generator.model.prompt_encoder.register_forward_hook(advance)
        try:
            yield
        finally:
            handle.remove()


def _zero_masks_hint(model: Any, image: Any, args: argparse.Namespace) -> str:
    """Why no mask came out: what each quality filter removes on a small prompt grid run with the filters
    off, and thresholds that would keep some of those candidates."""
    import numpy as np

    from sam_hf import SamAutomaticMaskGenerator

    hint = f"hint: no mask passed the quality filters {thresholds_text(args)}"
    if args.pred_iou_thresh <= 0 and args.stability_score_thresh <= 0:
        return hint + "; the model found no mask away from the crop edges in this image"
    side = min(_HINT_POINTS_PER_SIDE, args.points_per_side)
    kwargs = {
        **generator_kwargs(args),
        "points_per_side": side,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,  # keep every candidate, duplicates included: the counts are per mask
        "min_mask_region_area": 0,
    }
    records = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **kwargs).generate(image)
    if not records:
        return hint + "; the model found no mask away from the crop edges in this image"
    iou = np.array([r["predicted_iou"] for r in records])
    stability = np.nan_to_num(np.array([r["stability_score"] for r in records]), nan=0.0)
    suggest_iou = _round_down(np.quantile(iou, 0.9))
    passing = stability[iou > suggest_iou]
    suggest_stability = _round_down(np.quantile(passing if passing.size else stability, 0.9))
    kept = int(((iou > suggest_iou) & (stability >= suggest_stability)).sum())
    return (
        f"{hint}. With the filters off, a prompt grid of {side}x{side} gives {len(records)} candidate masks: "
        f"--pred-iou-thresh {args.pred_iou_thresh} alone removes {int((iou <= args.pred_iou_thresh).sum())} "
        f"(best predicted IoU {iou.max():.3f}), --stability-score-thresh {args.stability_score_thresh} "
        f"alone removes {int((stability < args.stability_score_thresh).sum())} (best stability score "
        f"{stability.max():.3f}). --pred-iou-thresh {suggest_iou} --stability-score-thresh "
        f"{suggest_stability} keeps {kept} of them; lower thresholds keep more, and less certain, masks."
    )


def _round_down(value: float) -> float:
    """`value` rounded down to a multiple of 0.05, as a threshold to suggest."""
    return math.floor(float(value) * 20) / 20
