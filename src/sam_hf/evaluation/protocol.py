"""Evaluate a SamHF model (plain or PEFT-wrapped) under one named, seeded prompting protocol.

The protocol, `sam_hf-interactive-v1`, is defined here and only here (`EvaluationProtocol`):
    - Objects: every non-empty ground-truth mask of every image; IoU/Dice at the original image resolution.
    - Prompts, simulated from the ground-truth mask with `sam_hf.prompting.simulation` and a generator seeded with
      `(seed, image index, prompt type index)`, so every model sees the same one-shot prompts:
        point         1 positive point; 3 masks (multimask), the one with the highest predicted IoU is kept.
        3point        3 positive points; single-mask output.
        box           the tight bounding box; single-mask output.
        jittered_box  the box with each side moved by up to `box_jitter` of its size; single-mask output.
        clicks        interactive: click 1 like `point` (its own seeded draw), then up to `max_clicks` clicks in total, each a correction
                      click in the larger error region of the previous mask (positive in a miss, negative in a
                      false positive), with all earlier clicks and the previous low-resolution logits as
                      `input_masks`; single-mask output after click 1. Reports mIoU per click and NoC@85/90.
    - Embeddings are computed once per image; all objects of an image go through the decoder in one call per
      prompt type (and per click).
A run with other settings reports a name listing them (e.g. `sam_hf-interactive-v1[max_clicks=5]`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..prompting.batching import append_points, pad_points
from ..prompting.simulation import correction_clicks, sample_box, sample_points
from .metric import SamSegmentation

__all__ = ["PROMPT_TYPES", "EvaluationProtocol", "evaluate_model"]

PROMPT_TYPES = ("point", "3point", "box", "jittered_box", "clicks")
_UPSAMPLE_CHUNK = 16  # objects per post-processing call


@dataclass(frozen=True)
class EvaluationProtocol:
    """Settings of the evaluation protocol (see the module docstring for what each prompt type does).

    Args:
        prompts: prompt types to run, a subset of `PROMPT_TYPES`.
        seed: seed of the prompt simulation.
        max_clicks: clicks per object in the interactive protocol.
        box_jitter: largest shift of a box side, as a fraction of the box size, for `jittered_box`.
        iou_thresholds: IoU targets of NoC.
    """

    prompts: tuple[str, ...] = PROMPT_TYPES
    seed: int = 0
    max_clicks: int = 20
    box_jitter: float = 0.1
    iou_thresholds: tuple[float, ...] = (0.85, 0.9)

    def __post_init__(self):
        unknown = [p for p in self.prompts if p not in PROMPT_TYPES]
        if unknown or not self.prompts:
            raise ValueError(
                f"prompts must be a non-empty subset of {PROMPT_TYPES}, got {list(self.prompts)}"
            )
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")

    @property
    def name(self) -> str:
        """`sam_hf-interactive-v1`, with any setting that differs from the default listed in brackets."""
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if f.name != "prompts" and getattr(self, f.name) != f.default
        ]
        return "sam_hf-interactive-v1" + (f"[{','.join(changed)}]" if changed else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings plus the name and a one-paragraph description, as stored in results."""
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        description = (
            f"One-shot prompts simulated from each ground-truth mask with seed {self.seed}: 1 positive point "
            "(best of 3 masks by predicted IoU), 3 positive points, tight box, box jittered by up to "
            f"{self.box_jitter:.0%} of its size (single mask each); interactive: up to {self.max_clicks} clicks, "
            "each correcting the larger error region, previous logits fed back as mask input."
        )
        return {"name": self.name, **settings, "description": description}


def evaluate_model(
    model: torch.nn.Module,
    processor: Any,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    protocol: EvaluationProtocol = EvaluationProtocol(),
    *,
    num_samples: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the protocol on `samples` and measure the results with the `sam_segmentation` metric.

    Args:
        model: `SamHFModel` or a `PeftModel` wrapping one.
        processor: `SamHFProcessor` matching the model.
        samples: `(image, masks)` pairs: image `(H, W, 3)` uint8 RGB, masks `(num_objects, H, W)` bool.
        protocol: prompting protocol.
        num_samples: length of `samples`, for the progress bar.
        progress: show a progress bar.

    Returns:
        Per prompt type, the metric's summary (`mean_iou`, `mean_dice`, `num_objects`, and for `clicks`
        `miou_per_click`, `noc@85`, `noc@90`, `nof@85`, `nof@90`).
    """
    metric = SamSegmentation(keep_in_memory=True)  # a few integers per mask: no cache files, no locks
    next_object = 0
    first_parameter = next(model.parameters())
    with torch.inference_mode():
        for image_index, (image, masks) in enumerate(
            tqdm(samples, total=num_samples, desc="evaluate", disable=not progress)
        ):
            masks = np.asarray(masks, dtype=bool)
            masks = masks[masks.reshape(len(masks), -1).any(axis=1)]  # an empty mask cannot be prompted
            if len(masks) == 0:
                continue
            pixel_values, original_sizes, reshaped_sizes = processor.preprocess_images([image])
            # what the decoder needs of the image (model.image_feature_names), on the model's device and dtype
            features = model.get_image_features(pixel_values.to(first_parameter))
            frame = _ImageFrame(model, processor, features, original_sizes, reshaped_sizes)
            object_ids = list(range(next_object, next_object + len(masks)))
            next_object += len(masks)
            for prompt in protocol.prompts:
                rng = np.random.default_rng([protocol.seed, image_index, PROMPT_TYPES.index(prompt)])
                for click, predicted in _run_prompt(frame, prompt, masks, rng, protocol):
                    metric.add_batch(
                        predictions=predicted,
                        references=masks,
                        prompt=prompt,
                        object_id=object_ids,
                        click=click,
                    )
    if next_object == 0:
        raise ValueError("samples must hold at least one non-empty ground-truth mask, got none")
    return metric.compute(iou_thresholds=protocol.iou_thresholds)


class _ImageFrame:
    """One image's cached features (`SamHFModel.get_image_features`) and sizes; decodes a batch of prompts into
    original-size masks."""

    def __init__(self, model, processor, features, original_sizes, reshaped_sizes):
        self.model, self.processor, self.features = model, processor, features
        self.original_sizes, self.reshaped_sizes = original_sizes, reshaped_sizes
        self.original_size = tuple(int(v) for v in original_sizes[0])

    def decode(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_logits: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Prompts for P objects in original pixels -> masks `(P, H, W)` bool and logits `(P, ms, ms)`.

        points `(P, N, 2)` XY with labels `(P, N)`; boxes `(P, 4)` XYXY; mask_logits `(P, ms, ms)`.
        With `multimask_output` the mask with the highest predicted IoU is kept.
        """
        device = self.features["image_embeddings"].device
        inputs = {}
        if points is not None:
            coords = self.processor.transform_coords(
                torch.as_tensor(points, dtype=torch.float32), self.original_size
            )
            inputs["input_points"] = coords[None].to(device)
            inputs["input_labels"] = torch.as_tensor(labels, dtype=torch.long)[None].to(device)
        if boxes is not None:
            boxes = self.processor.transform_boxes(
                torch.as_tensor(boxes, dtype=torch.float32), self.original_size
            )
            inputs["input_boxes"] = boxes[None].to(device)
        if mask_logits is not None:
            inputs["input_masks"] = mask_logits[None]
        output = self.model(**self.features, multimask_output=multimask_output, **inputs)
        best = output.iou_scores[0].argmax(dim=-1)  # (P,)
        logits = output.pred_masks[0, torch.arange(len(best), device=best.device), best]  # (P, ms, ms)
        # Upsampling to the original size costs P x H x W floats: a few objects at a time.
        masks = [self._upsample(chunk) for chunk in logits.split(_UPSAMPLE_CHUNK)]
        return np.concatenate(masks), logits

    def _upsample(self, logits: torch.Tensor) -> np.ndarray:
        """`(P, ms, ms)` logits -> `(P, H, W)` bool masks at the original size."""
        masks = self.processor.post_process_masks(
            logits[None, :, None], self.original_sizes, self.reshaped_sizes
        )
        return masks[0][:, 0].cpu().numpy().astype(bool)


def _run_prompt(
    frame: _ImageFrame, prompt: str, masks: np.ndarray, rng: np.random.Generator, protocol: EvaluationProtocol
):
    """Yield `(click, predicted masks (P, H, W))`: once for one-shot prompts, once per click for `clicks`."""
    if prompt in ("box", "jittered_box"):
        jitter = protocol.box_jitter if prompt == "jittered_box" else 0.0
        boxes = np.stack([sample_box(mask, rng, jitter=jitter) for mask in masks])
        yield 1, frame.decode(None, None, boxes, None, multimask_output=False)[0]
        return
    num_positive = 3 if prompt == "3point" else 1
    points, labels = pad_points([sample_points(mask, rng, num_positive=num_positive) for mask in masks])
    predicted, logits = frame.decode(points, labels, None, None, multimask_output=prompt != "3point")
    yield 1, predicted
    if prompt != "clicks":
        return
    for click in range(2, protocol.max_clicks + 1):
        # an object predicted exactly gets a padding point: nothing left to correct
        points, labels = append_points(points, labels, *correction_clicks(predicted, masks, rng))
        predicted, logits = frame.decode(points, labels, None, logits, multimask_output=False)
        yield click, predicted
