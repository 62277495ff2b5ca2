"""`sam-hf demo`: the whole loop offline in under a minute with the shipped `sam-hf-tiny` model.

Segments a procedural sample image (`sam_hf.data.synthetic`, held-out split) with a point and a box,
runs automatic mask generation on it and prints the IoU of each against the known masks; then fine-tunes a
LoRA adapter on the decoder for a few steps on a second procedural domain (`cells`, which the model never
saw) with the package's fine-tuning loop, and prints 1-point and box mean IoU on held-out `cells` images
before and after. Writes overlay PNGs, the adapter and a training-curve plot into `--out`
(default `./sam-hf-demo/`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import load_model, resolve_device

__all__ = ["add_parser", "run"]

_SAMPLE_INDEX = 5  # a held-out image with six objects of at least 300 px and several small ones
_SAMPLE_SIZE = 192  # pixels; the demo image is the same whatever the model's input size
_MIN_AREA = 300  # pixels; AMG of the tiny model is scored on objects at least this large
# The LoRA step: images of the `cells` domain to train on and to measure on, optimizer steps, learning rate.
_TRAIN_IMAGES, _TEST_IMAGES, _STEPS, _LEARNING_RATE = 24, 8, 30, 2e-3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="offline demo: point, box and automatic masks with sam-hf-tiny", description=__doc__
    )
    parser.add_argument("--out", default="sam-hf-demo", help="output folder (default: ./sam-hf-demo)")
    parser.add_argument(
        "--model", default="sam-hf-tiny", help="any model form `sam-hf segment` takes (default: sam-hf-tiny)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data.synthetic import generate_sample
    from ..evaluation.metric import mask_iou
    from ..inference import SamAutomaticMaskGenerator, SamPredictor
    from ..visualization import draw_masks, palette_layers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(args.device))
    model = load_model(args.model)[0].to(device)

    sample = generate_sample(_SAMPLE_INDEX, "test", "shapes", image_size=_SAMPLE_SIZE)
    areas = sample.masks.reshape(len(sample.masks), -1).sum(1)
    target = sample.masks[int(areas.argmax())]
    draw_masks(sample.image, palette_layers(sample.masks)).save(out / "ground_truth.png")

    predictor = SamPredictor(model)
    predictor.set_image(sample.image)
    point = _interior_point(target)
    masks, scores, _ = predictor.predict(point_coords=point[None], point_labels=np.array([1]))
    point_mask = masks[int(scores.argmax())]
    ys, xs = np.nonzero(target)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    box_mask = predictor.predict(box=box, multimask_output=False)[0][0]
    draw_masks(sample.image, palette_layers([point_mask]), point[None], np.array([1])).save(out / "point.png")
    draw_masks(sample.image, palette_layers([box_mask]), box=box).save(out / "box.png")
    print(f"point prompt at {point.tolist()}: IoU with the object {mask_iou(point_mask, target):.3f}")
    print(f"box prompt {box.tolist()}: IoU with the object {mask_iou(box_mask, target):.3f}")

    generator = SamAutomaticMaskGenerator(
        model, points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.7
    )
    found = [record["segmentation"] for record in generator.generate(sample.image)]
    draw_masks(sample.image, palette_layers(found)).save(out / "automatic.png")
    large = [gt for gt in sample.masks if gt.sum() >= _MIN_AREA]
    matched = sum(max((mask_iou(m, gt) for m in found), default=0.0) > 0.5 for gt in large)
    print(
        f"automatic masks: {len(found)} masks; {matched} of the {len(large)} objects of at least "
        f"{_MIN_AREA} px found at IoU > 0.5"
    )
    before, after, losses = _adapt_to_cells(args.model, model, out)
    for prompt in ("point", "box"):
        print(
            f"cells (unseen domain), {prompt} prompts, mean IoU on {_TEST_IMAGES} held-out images: "
            f"{before[prompt]['mean_iou']:.3f} before LoRA, {after[prompt]['mean_iou']:.3f} after {_STEPS} steps"
        )
    _plot_losses(out / "training_curve.png", losses)
    print(
        f"wrote {out}/ground_truth.png, point.png, box.png, automatic.png, training_curve.png and the "
        f"adapter in {out}/lora-cells/"
    )
    return 0


def _adapt_to_cells(model_name: str, model, out: Path):
    """Fine-tune a LoRA adapter on `cells` with `sam_hf.training.finetune`; evaluate before and after.

    Returns the protocol results (per prompt type) of the model without and with the adapter, and the loss
    of every optimizer step.
    """
    from ..data.synthetic import synthetic_dataset, synthetic_samples
    from ..evaluation import EvaluationProtocol, evaluate_model
    from ..hub import load_pretrained
    from ..processing_sam_hf import SamHFProcessor
    from ..training.loop import FinetuneConfig, finetune

    size = model.config.image_size
    train_dir = out / "cells-train"
    synthetic_dataset(_TRAIN_IMAGES, "train", "cells", size).save_to_disk(str(train_dir))
    config = FinetuneConfig(
        model=model_name,
        dataset=str(train_dir),
        output_dir=str(out / "lora-cells"),
        mask_column="masks",
        prompt_types=["point", "box"],
        max_prompts=4,
        max_steps=_STEPS,
        batch_size=4,
        learning_rate=_LEARNING_RATE,
        lora_r=8,
        merge=False,
        cpu=model.device.type == "cpu",
    )
    summary = finetune(config)
    processor = SamHFProcessor.from_model_config(model.config)
    protocol = EvaluationProtocol(prompts=("point", "box"))

    def measure(candidate):
        samples = ((s.image, s.masks) for s in synthetic_samples(_TEST_IMAGES, "test", "cells", size))
        return evaluate_model(candidate.eval(), processor, samples, protocol, progress=False)

    adapted = load_pretrained(config.output_dir, verbose=False).to(model.device)
    return measure(model), measure(adapted), summary["losses"]


def _plot_losses(path: Path, losses: list[float], width: int = 480, height: int = 240) -> None:
    """A line plot of the training loss per step, drawn with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    left, right, top, bottom = 56, 12, 24, 32
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    xs = [left + (width - left - right) * i / max(len(losses) - 1, 1) for i in range(len(losses))]
    ys = [top + (height - top - bottom) * (high - v) / span for v in losses]
    draw.line(list(zip(xs, ys, strict=True)), fill=(0, 90, 200), width=2)
    draw.text((left, 6), "LoRA fine-tuning on cells: training loss per step", fill="black")
    draw.text((4, top), f"{high:.2f}", fill="black")
    draw.text((4, height - bottom - 10), f"{low:.2f}", fill="black")
    draw.text((left, height - bottom + 8), "1", fill="black")
    draw.text((width - right - 24, height - bottom + 8), str(len(losses)), fill="black")
    picture.save(path)


def _interior_point(mask):
    """The mask pixel farthest from the mask's boundary along rows and columns (a cheap inner point)."""
    import numpy as np

    depth = np.minimum(_run_depth(mask), _run_depth(mask.T).T)
    y, x = np.unravel_index(int(depth.argmax()), mask.shape)
    return np.array([x + 0.5, y + 0.5], dtype=np.float32)


def _run_depth(mask):
    """Per pixel, the distance to the nearest background pixel in its row (0 outside the mask)."""
    import numpy as np

    left = np.zeros(mask.shape, np.int32)
    right = np.zeros(mask.shape, np.int32)
    width = mask.shape[1]
    for x in range(width):
        left[:, x] = np.where(mask[:, x], (left[:, x - 1] if x else 0) + 1, 0)
        r = width - 1 - x
        right[:, r] = np.where(mask[:, r], (right[:, r + 1] if x else 0) + 1, 0)
    return np.minimum(left, right)
