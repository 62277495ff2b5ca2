"""`sam-hf segment`: prompt one image with points and/or a box; write masks, an overlay and scores."""

from __future__ import annotations

import argparse
from typing import Any

from . import SamHFUserError, add_model_arguments, load_model, resolve_device, user_input

__all__ = ["add_parser", "parse_box", "parse_point"]

_OVERLAY_COLOUR = (30, 144, 255)  # the best mask is tinted and outlined with this (dodger blue)


def parse_point(text: str) -> tuple[float, float, int]:
    """`"x,y"` or `"x,y:label"` (label 1 foreground, the default, or 0 background) -> `(x, y, label)`."""
    coords, _, label = text.partition(":")
    parts = coords.split(",")
    try:
        x, y = (float(p) for p in parts)
        label_value = int(label) if label else 1
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--point expects X,Y or X,Y:LABEL with pixel coordinates and LABEL 1 or 0, got {text!r}"
        ) from None
    if label_value not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (foreground) or 0 (background), got {text!r}"
        )
    return x, y, label_value


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`"x0,y0,x1,y1"` pixel box -> a tuple."""
    try:
        x0, y0, x1, y1 = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box expects X0,Y0,X1,Y1 in pixels, got {text!r}") from None
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"--box expects X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0, got {text!r}"
        )
    return x0, y0, x1, y1


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image from point and box prompts",
        description="Segment IMAGE from point and/or box prompts (pixel coordinates) and write mask_<i>.png, "
        "overlay.png (the best mask tinted, prompts drawn) and scores.json into --out.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (any format PIL reads)")
    add_model_arguments(parser)
    parser.add_argument(
        "--point",
        action="append",
        type=parse_point,
        default=[],
        metavar="X,Y[:LABEL]",
        help="point prompt; LABEL 1 foreground (default) or 0 background; repeat for more points",
    )
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
    parser.add_argument(
        "--multimask",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="predict three masks for an ambiguous prompt (default: on for a single point without box, off otherwise)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from sam_hf import SamPredictor
    from sam_hf.data.images import to_rgb
    from sam_hf.visualization import MaskLayer, draw_masks

    if not args.point and args.box is None:
        raise SamHFUserError("give at least one --point X,Y[:LABEL] or a --box X0,Y0,X1,Y1")
    device = resolve_device(args.device)
    with user_input(f"IMAGE {args.image}"):
        image = to_rgb(args.image, "IMAGE")
    model, processor, resolved = load_model(args.model)
    model.to(device)
    args.model = resolved.name
    predictor = SamPredictor(model, processor)
    predictor.set_image(image)

    coords = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
    labels = np.array([p[2] for p in args.point]) if args.point else None
    box = np.array(args.box) if args.box is not None else None
    multimask = args.multimask if args.multimask is not None else (len(args.point) == 1 and box is None)
    masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=multimask)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, mask in enumerate(masks):
        names.append(f"mask_{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / names[-1])
    best = int(np.argmax(scores))
    best_layer = MaskLayer(masks[best], _OVERLAY_COLOUR, outline=True)
    draw_masks(image, [best_layer], coords, labels, box).save(out / "overlay.png")
    report = {
        "image": str(args.image),
        "model": str(args.model),
        "image_size": {"height": masks.shape[1], "width": masks.shape[2]},
        "points": [{"x": x, "y": y, "label": label} for x, y, label in args.point],
        "box": list(args.box) if args.box is not None else None,
        "multimask_output": multimask,
        "scores": [float(s) for s in scores],
        "masks": names,
        "best": best,
        "mask_area": [int(m.sum()) for m in masks],
    }
    (out / "scores.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"best mask {names[best]} (predicted IoU {scores[best]:.3f}); wrote {len(names)} masks, overlay.png, scores.json to {out}"
    )
    return 0
