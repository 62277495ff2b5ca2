"""`sam_segmentation`: IoU, Dice and interactive click metrics for promptable segmentation, as an `evaluate` metric.

Self-contained (numpy, datasets, evaluate only) so it loads offline by path:
`evaluate.load("/path/to/sam_segmentation.py")`, or directly: `SamSegmentation()`.

Each prediction is reduced to four integers as it is added (intersection, prediction area, reference area,
plus its object/click keys), so evaluating thousands of full-resolution masks stores kilobytes, not gigabytes.

Inputs:
    predictions: binary masks, a `(num_masks, H, W)` array or a list of `(H, W)` arrays (bool or {0,1}).
    references: ground-truth masks, same shapes as `predictions`.
    prompt: optional, one name per mask (default "mask"): results are reported per prompt name.
    object_id: optional, one int per mask identifying the ground-truth object (default: a running counter).
    click: optional, 1-based click index per mask (default 1). Masks of one object at clicks 1..K form its
        IoU-per-click curve; a prompt with more than one click gets mIoU@k and NoC@t.

Output, per prompt name:
    mean_iou, mean_dice: over objects, at each object's last click (the only click for one-shot prompts).
        An empty prediction against an empty reference counts as IoU = Dice = 1.
    num_objects: number of objects averaged over.
    miou_per_click (interactive only): `[mIoU@1, ..., mIoU@K]`.
    noc@85, noc@90 (interactive only, one per `iou_thresholds`): mean number of clicks needed to reach the
        IoU threshold; an object that never reaches it within K clicks counts as K (the usual convention).
    nof@85, nof@90 (interactive only): number of objects that never reach the threshold within K clicks.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

__all__ = ["SamSegmentation", "clicks_to_reach", "mask_iou"]

_FEATURES = datasets.Features(
    {
        "intersection": datasets.Value("int64"),
        "prediction_area": datasets.Value("int64"),
        "reference_area": datasets.Value("int64"),
        "prompt": datasets.Value("string"),
        "object_id": datasets.Value("int64"),
        "click": datasets.Value("int32"),
    }
)


class SamSegmentation(evaluate.Metric):
    """Mean IoU / Dice per prompt type and interactive mIoU@k / NoC@t, from binary masks."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="IoU, Dice, mIoU per click and NoC@85/90 for promptable (SAM-style) segmentation.",
            citation="",
            inputs_description=__doc__,
            features=_FEATURES,
            format="numpy",
        )

    def add_batch(
        self, *, predictions=None, references=None, prompt=None, object_id=None, click=None, **kwargs
    ):
        """Add masks (reduced to pixel counts on the spot) or, internally, rows of counts."""
        if predictions is None and references is None:
            return super().add_batch(**kwargs)
        counts = _mask_counts(predictions, references)
        num = len(counts)
        start = getattr(self, "_next_object_id", 0)
        self._next_object_id = start + num
        rows = {
            "intersection": counts[:, 0],
            "prediction_area": counts[:, 1],
            "reference_area": counts[:, 2],
            "prompt": _per_mask(prompt, num, "prompt", "mask"),
            "object_id": _per_mask(object_id, num, "object_id", None) or list(range(start, start + num)),
            "click": _per_mask(click, num, "click", 1),
        }
        return super().add_batch(**rows)

    def add(self, *, prediction=None, reference=None, prompt=None, object_id=None, click=None, **kwargs):
        """Add one mask pair."""
        if prediction is None and reference is None:
            return super().add(**kwargs)
        return self.add_batch(
            predictions=[prediction],
            references=[reference],
            prompt=None if prompt is None else [prompt],
            object_id=None if object_id is None else [object_id],
            click=None if click is None else [click],
        )

    def compute(
        self, *, predictions=None, references=None, prompt=None, object_id=None, click=None, **kwargs
    ):
        """Add the given masks if any, then compute. Keyword `iou_thresholds` (default (0.85, 0.9)) sets NoC."""
        if predictions is not None or references is not None:
            self.add_batch(
                predictions=predictions,
                references=references,
                prompt=prompt,
                object_id=object_id,
                click=click,
            )
        if self.writer is None:  # evaluate itself fails obscurely on an empty stack
            raise ValueError("no masks to measure: pass predictions and references, or add them first")
        self._next_object_id = 0
        return super().compute(**kwargs)

    def _compute(
        self,
        intersection,
        prediction_area,
        reference_area,
        prompt,
        object_id,
        click,
        iou_thresholds=(0.85, 0.9),
    ) -> dict:
        intersection = np.asarray(intersection, dtype=np.float64)
        total = np.asarray(prediction_area, dtype=np.float64) + np.asarray(reference_area, dtype=np.float64)
        union = total - intersection
        # Empty prediction on an empty reference is a perfect answer.
        iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
        dice = np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)
        prompt, object_id, click = np.asarray(prompt), np.asarray(object_id), np.asarray(click)
        return {
            name: _prompt_summary(
                iou[prompt == name],
                dice[prompt == name],
                object_id[prompt == name],
                click[prompt == name],
                name,
                iou_thresholds,
            )
            for name in sorted(set(prompt.tolist()))
        }


def mask_iou(prediction: np.ndarray, reference: np.ndarray) -> float:
    """IoU of two `(H, W)` binary masks, with the metric's convention: an empty prediction of an empty
    reference is a perfect answer (1.0)."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    union = np.logical_or(prediction, reference).sum()
    return float(np.logical_and(prediction, reference).sum() / union) if union else 1.0


def _prompt_summary(iou, dice, object_id, click, name, iou_thresholds) -> dict:
    """Summarise one prompt type: rows are (object, click) pairs."""
    objects = np.unique(object_id)
    num_clicks = int(click.max())
    if np.any(click < 1) or len(np.unique(object_id * (num_clicks + 1) + click)) != len(click):
        raise ValueError(f"prompt {name!r}: each (object_id, click) pair must appear once with click >= 1")
    # curves[o, k - 1] = metric of object o after click k
    curves_iou = np.full((len(objects), num_clicks), np.nan)
    curves_dice = np.full((len(objects), num_clicks), np.nan)
    rows = np.searchsorted(objects, object_id)
    curves_iou[rows, click - 1] = iou
    curves_dice[rows, click - 1] = dice
    if np.isnan(curves_iou).any():
        raise ValueError(
            f"prompt {name!r}: every object needs a mask for each click 1..{num_clicks}; some are missing"
        )
    summary = {
        "mean_iou": float(curves_iou[:, -1].mean()),
        "mean_dice": float(curves_dice[:, -1].mean()),
        "num_objects": len(objects),
    }
    if num_clicks > 1:
        summary["miou_per_click"] = [float(v) for v in curves_iou.mean(axis=0)]
        for threshold in iou_thresholds:
            clicks_needed, failed = clicks_to_reach(curves_iou, threshold, num_clicks)
            tag = round(threshold * 100)
            summary[f"noc@{tag}"] = float(clicks_needed.mean())
            summary[f"nof@{tag}"] = int(failed.sum())
    return summary


def clicks_to_reach(
    iou_per_click: Sequence[Sequence[float]] | np.ndarray, threshold: float, max_clicks: int
) -> tuple[np.ndarray, np.ndarray]:
    """NoC's count per object (Sofiiuk et al., RITM, 2022): the first click (1-based) whose IoU reaches
    `threshold`, `max_clicks` for an object that never does.

    Args:
        iou_per_click: per object, its IoU after clicks 1, 2, ... (curves may differ in length, e.g. an
            annotator who stops once the mask is good enough).
        threshold: the IoU to reach (0.85 for NoC@85, 0.90 for NoC@90).
        max_clicks: the count of an object that never reaches it.

    Returns:
        `clicks (num_objects,)` int64 and `failed (num_objects,)` bool (never reached).
    """
    clicks = np.full(len(iou_per_click), max_clicks, dtype=np.int64)
    failed = np.ones(len(iou_per_click), dtype=bool)
    for index, curve in enumerate(iou_per_click):
        reached = np.flatnonzero(np.asarray(curve) >= threshold)
        if len(reached):
            clicks[index], failed[index] = reached[0] + 1, False
    return clicks, failed


def _mask_counts(predictions, references) -> np.ndarray:
    """`(num_masks, 3)` int64 rows of (intersection, prediction area, reference area)."""
    if predictions is None or references is None:
        raise ValueError("predictions and references must be given together")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must hold as many masks, got {len(predictions)} and {len(references)}"
        )
    counts = np.zeros((len(predictions), 3), dtype=np.int64)
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
        if pred.ndim != 2 or pred.shape != ref.shape:
            raise ValueError(
                f"predictions[{i}] and references[{i}] must be (H, W) masks of one shape, "
                f"got {pred.shape} and {ref.shape}"
            )
        counts[i] = (np.count_nonzero(pred & ref), np.count_nonzero(pred), np.count_nonzero(ref))
    return counts


def _per_mask(value, num: int, name: str, default):
    """Broadcast a scalar (or None -> default) to a list of `num` values, or check a list's length."""
    if value is None:
        return None if default is None else [default] * num
    if isinstance(value, (str, int, np.integer)):
        return [value] * num
    value = list(value)
    if len(value) != num:
        raise ValueError(f"{name} must be one value or one per mask ({num}), got {len(value)}")
    return value
