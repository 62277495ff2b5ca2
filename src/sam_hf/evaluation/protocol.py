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

Results (`eval_results.json`, `EVAL_RESULTS_NAME`):
    {"protocol": {...}, "dataset": str, "split": str | None, "num_images": int,
     "runs": {run_name: {"model": str, "eval_runtime_s": float,
                         "results": {prompt: {"mean_iou", "mean_dice", "num_objects", ...}}}}}
with run names "base" and "finetuned" for an adapter (the base is the adapter disabled), "model" otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .metric import SamSegmentation

__all__ = [
    "EVAL_RESULTS_NAME",
    "NOT_MEASURED",
    "PROMPT_TYPES",
    "EvaluationProtocol",
    "evaluate_model",
    "flat_metrics",
    "metric_label",
    "results_table",
    "timed_run",
    "write_eval_results",
]

EVAL_RESULTS_NAME = "eval_results.json"
NOT_MEASURED = "not measured"
PROMPT_TYPES = ("point", "3point", "box", "jittered_box", "clicks")
_PADDING_LABEL = -10  # point label the model masks out of attention
_CLICKS_SHOWN = (1, 3, 5, 10, 20)
_UPSAMPLE_CHUNK = 16  # objects per post-processing call
_LABELS = {"mean_iou": "mIoU", "mean_dice": "Dice"}


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
            embeddings = model.get_image_embeddings(
                pixel_values.to(first_parameter)
            )  # model's device and dtype
            frame = _ImageFrame(model, processor, embeddings, original_sizes, reshaped_sizes)
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
    """One image's cached embeddings and sizes; decodes a batch of prompts into original-size masks."""

    def __init__(self, model, processor, embeddings, original_sizes, reshaped_sizes):
        self.model, self.processor, self.embeddings = model, processor, embeddings
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
        device = self.embeddings.device
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
        output = self.model(image_embeddings=self.embeddings, multimask_output=multimask_output, **inputs)
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
    from ..prompting.simulation import sample_box, sample_correction_click, sample_points

    if prompt in ("box", "jittered_box"):
        jitter = protocol.box_jitter if prompt == "jittered_box" else 0.0
        boxes = np.stack([sample_box(mask, rng, jitter=jitter) for mask in masks])
        yield 1, frame.decode(None, None, boxes, None, multimask_output=False)[0]
        return
    num_positive = 3 if prompt == "3point" else 1
    points, labels = _pad_points([sample_points(mask, rng, num_positive=num_positive) for mask in masks])
    predicted, logits = frame.decode(points, labels, None, None, multimask_output=prompt != "3point")
    yield 1, predicted
    if prompt != "clicks":
        return
    for click in range(2, protocol.max_clicks + 1):
        new_points, new_labels = [], []
        for pred, gt in zip(predicted, masks, strict=True):
            if np.array_equal(
                pred, gt
            ):  # nothing left to correct: a padding point keeps the batch rectangular
                new_points.append(np.zeros(2, dtype=np.float32))
                new_labels.append(_PADDING_LABEL)
            else:
                coord, label = sample_correction_click(pred, gt, rng)
                new_points.append(np.asarray(coord, dtype=np.float32))
                new_labels.append(int(label))
        points = np.concatenate([points, np.stack(new_points)[:, None]], axis=1)
        labels = np.concatenate([labels, np.asarray(new_labels)[:, None]], axis=1)
        predicted, logits = frame.decode(points, labels, None, logits, multimask_output=False)
        yield click, predicted


def _pad_points(per_object: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-object `(coords (N_i, 2), labels (N_i,))` into `(P, N, 2)` / `(P, N)`, padding with label -10."""
    width = max(len(labels) for _, labels in per_object)
    points = np.zeros((len(per_object), width, 2), dtype=np.float32)
    labels = np.full((len(per_object), width), _PADDING_LABEL, dtype=np.int64)
    for i, (coords, object_labels) in enumerate(per_object):
        points[i, : len(object_labels)] = coords
        labels[i, : len(object_labels)] = object_labels
    return points, labels


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """One prompt's headline numbers as `{key: value}` in table order.

    One-shot prompts: mean_iou, mean_dice. Interactive: miou@k for k in 1, 3, 5, 10, 20 and the last click,
    then noc@t (its mean_iou is miou@last, so it is not repeated).
    """
    curve = result.get("miou_per_click")
    if not curve:
        return {key: result[key] for key in _LABELS if key in result}
    shown = sorted({k for k in _CLICKS_SHOWN if k <= len(curve)} | {len(curve)})
    flat = {f"miou@{k}": curve[k - 1] for k in shown}
    flat.update({key: result[key] for key in sorted(result) if key.startswith("noc@")})
    return flat


def metric_label(key: str) -> str:
    """Human label of a `flat_metrics` key: "mIoU", "Dice", "mIoU@3 clicks", "NoC@90"."""
    if key.startswith("miou@"):
        clicks = int(key.split("@")[1])
        return f"mIoU@{clicks} click" + ("s" if clicks > 1 else "")
    return _LABELS.get(key) or key.replace("noc", "NoC")


def results_table(runs: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (prompt, metric, one value per run) of a results dict's `runs`.

    A number a run did not measure reads "not measured"; IoU/Dice have 4 decimals, NoC 2.
    """
    names = list(runs)
    prompts = [p for p in PROMPT_TYPES if any(p in run["results"] for run in runs.values())]
    rows = []
    for prompt in prompts:
        per_run = [flat_metrics(runs[name]["results"].get(prompt, {})) for name in names]
        keys = list(dict.fromkeys(key for flat in per_run for key in flat))
        objects = next(
            runs[n]["results"][prompt]["num_objects"] for n in names if prompt in runs[n]["results"]
        )
        for key in keys:
            fmt = "{:.2f}" if key.startswith("noc@") else "{:.4f}"
            values = [fmt.format(flat[key]) if key in flat else NOT_MEASURED for flat in per_run]
            rows.append([f"{prompt} ({objects} objects)", metric_label(key), *values])
    return ["prompt", "metric", *names], rows


def timed_run(
    source: str,
    model: torch.nn.Module,
    processor,
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    protocol: EvaluationProtocol,
    num_samples: int | None = None,
) -> dict[str, Any]:
    """One entry of `eval_results.json`'s `runs`: `evaluate_model`'s results, the model's name, the time taken."""
    start = time.perf_counter()
    results = evaluate_model(model, processor, samples, protocol, num_samples=num_samples)
    return {"model": source, "eval_runtime_s": round(time.perf_counter() - start, 3), "results": results}


def write_eval_results(
    path: str | Path,
    protocol: EvaluationProtocol,
    dataset: str,
    split: str | None,
    num_images: int,
    runs: dict[str, Any],
) -> str:
    """Write `eval_results.json` (protocol, data, `runs` of `timed_run`) to `path`; return a report to print.

    The report is a title line (protocol, dataset, split, image count) and the aligned `results_table`.
    """
    output = {
        "protocol": protocol.to_dict(),
        "dataset": dataset,
        "split": split,
        "num_images": num_images,
        "runs": runs,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
    header, rows = results_table(runs)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = f"{protocol.name} on {dataset}" + (f" [{split}]" if split else "") + f", {num_images} images"
    return "\n".join([title, *lines])
