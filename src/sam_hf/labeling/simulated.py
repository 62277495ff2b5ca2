"""A simulated annotator that drives `LabelSession`, to measure the data-engine loop without people.

The annotator labels each ground-truth object as a person would in the app, through the session's own
functions: a first positive click (`sample_points`), the candidate that looks most like the object
(`select_candidate`, the one with the highest IoU against the ground truth), then correction clicks in the
larger error region of the shown mask (`sample_correction_click`: positive in a miss, negative in a false
positive), until the mask reaches `target_iou` or `max_clicks`. This is the interactive protocol of RITM /
SimpleClick (Sofiiuk et al. 2022; Liu et al. 2023), whose NoC@85 / NoC@90 (clicks to reach IoU 0.85 / 0.90,
`max_clicks` when never reached) it reports, as `sam_hf.evaluation` does. Where the clicks leave the mask
below `label_iou`, the annotator then fixes it with the session's brush and eraser (`LabelSession.brush`,
dabs placed by `sample_brush_stroke`), as SA-1B's annotators did, up to `max_strokes` dabs; then `accept`.
So the labels are as good as a careful person makes them, not the model's own masks, and a retraining round
can learn what the model got wrong.

`run_label_loop` measures the SAM data engine's claim that retraining on the new labels makes labelling
faster: label images of a domain the model has not seen, retrain once on those labels, label held-out images
of the same domain, and compare with the starting model on the same held-out images.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.metric import clicks_to_reach, mask_iou
from ..prompting.simulation import sample_brush_stroke, sample_correction_click, sample_points
from .session import LabelSession

__all__ = ["ObjectLog", "label_images", "run_label_loop", "summarize"]


@dataclass
class ObjectLog:
    """How one object was labelled.

    Attributes:
        image_index, object_index: the image in the session and the ground-truth object on it.
        round: the session's labelling round.
        iou_per_click: IoU of the shown mask with the ground truth after each click.
        clicks: clicks made (`len(iou_per_click)`).
        strokes: brush and eraser dabs made after the clicks.
        label_iou: IoU of the accepted mask with the ground truth (0 when not accepted).
        accepted: the final mask was accepted (False: it was empty, the annotator gave up on the object).
        seconds: the accepted object's `seconds` in the session (0 when not accepted).
    """

    image_index: int
    object_index: int
    round: int
    iou_per_click: list[float]
    clicks: int
    strokes: int
    label_iou: float
    accepted: bool
    seconds: float


def label_images(
    session: LabelSession,
    ground_truth: dict[int, np.ndarray],
    seed: int = 0,
    target_iou: float = 0.9,
    max_clicks: int = 20,
    label_iou: float = 0.95,
    max_strokes: int = 30,
) -> list[ObjectLog]:
    """Label every object of the given images in `session` (see the module docstring), finishing each image.

    Args:
        session: the session to drive (in manual mode).
        ground_truth: image index in the session -> `(num_objects, H, W)` bool masks of that image.
        seed: seed of the clicks; image i draws from `(seed, i)`.
        target_iou: stop clicking once the shown mask reaches this IoU.
        max_clicks: stop clicking after this many clicks at the latest.
        label_iou, max_strokes: after the clicks, brush until the mask reaches `label_iou`, with at most
            `max_strokes` dabs (0: accept what the clicks gave).

    Returns:
        One `ObjectLog` per non-empty ground-truth object, in order.
    """
    if not 0.0 < target_iou <= 1.0 or max_clicks < 1 or not 0.0 < label_iou <= 1.0 or max_strokes < 0:
        raise ValueError(
            "target_iou and label_iou must be in (0, 1], max_clicks >= 1 and max_strokes >= 0, got "
            f"{target_iou}, {label_iou}, {max_clicks}, {max_strokes}"
        )
    logs = []
    for index, masks in ground_truth.items():
        session.go_to(index)
        rng = np.random.default_rng((seed, index))
        for number, gt in enumerate(np.asarray(masks, dtype=bool)):
            if not gt.any():
                continue
            first, _ = sample_points(gt, rng, num_positive=1)
            proposal = session.add_click(float(first[0, 0]), float(first[0, 1]), positive=True)
            proposal = session.select_candidate(int(np.argmax([mask_iou(m, gt) for m in proposal.masks])))
            ious = [mask_iou(proposal.mask, gt)]
            while ious[-1] < target_iou and len(ious) < max_clicks:
                (x, y), label = sample_correction_click(proposal.mask, gt, rng)
                proposal = session.add_click(float(x), float(y), positive=bool(label))
                ious.append(mask_iou(proposal.mask, gt))
            strokes, quality = 0, ious[-1]
            while quality < label_iou and strokes < max_strokes:
                (x, y), radius, erase = sample_brush_stroke(proposal.mask, gt, rng)
                proposal = session.brush(float(x), float(y), radius, erase=erase)
                strokes, quality = strokes + 1, mask_iou(proposal.mask, gt)
            accepted = bool(proposal.mask.any())
            if accepted:
                seconds = session.accept().seconds
            else:  # nothing to accept: the annotator gives up on the object
                session.clear_prompts()
                seconds, quality = 0.0, 0.0
            logs.append(
                ObjectLog(index, number, session.round, ious, len(ious), strokes, quality, accepted, seconds)
            )
        session.finish_image()
    return logs


def summarize(logs: list[ObjectLog], max_clicks: int = 20) -> dict[str, Any]:
    """`objects`, `clicks_per_object`, `strokes_per_object`, `noc@85`, `noc@90` (clicks to reach the IoU,
    `max_clicks` when never reached), `nof@85`, `nof@90` (objects never reaching it), `miou@1` (IoU after the
    first click), `label_miou` (mean IoU of the accepted masks with the ground truth)."""
    summary: dict[str, Any] = {
        "objects": len(logs),
        "clicks_per_object": float(np.mean([log.clicks for log in logs])),
        "strokes_per_object": float(np.mean([log.strokes for log in logs])),
        "label_miou": float(np.mean([log.label_iou for log in logs])),
        "miou@1": float(np.mean([log.iou_per_click[0] for log in logs])),
    }
    for threshold in (0.85, 0.90):
        needed, failed = clicks_to_reach([log.iou_per_click for log in logs], threshold, max_clicks)
        summary[f"noc@{round(threshold * 100)}"] = float(needed.mean())
        summary[f"nof@{round(threshold * 100)}"] = int(failed.sum())
    return summary


def run_label_loop(
    model: str,
    work_dir: str | os.PathLike,
    num_images: int = 24,
    num_heldout: int = 10,
    domain: str = "cells",
    image_size: int = 128,
    seed: int = 0,
    target_iou: float = 0.9,
    max_clicks: int = 20,
    label_iou: float = 0.95,
    max_strokes: int = 30,
    **finetune_overrides: Any,
) -> dict[str, Any]:
    """The data-engine loop on a procedural domain (`sam_hf.data.synthetic`), measured.

    1. In one session, the annotator labels `num_images` images of `domain` (`train` split) with `model`.
    2. The session retrains on those labels (`LabelSession.start_retrain(**finetune_overrides)`) and swaps
       the new model in.
    3. The same session and annotator label `num_heldout` held-out images (`test` split) with it.
    4. A second session labels the same held-out images with `model`, the baseline of step 3.

    Args:
        model: the starting model (any form `load_model` accepts), e.g. `"sam-hf-tiny"`.
        work_dir: where the images and the two sessions' outputs are written.
        num_images, num_heldout: images labelled before and after retraining.
        domain, image_size: the procedural domain and image side in pixels (128: `sam-hf-tiny`'s input size).
        seed, target_iou, max_clicks, label_iou, max_strokes: the annotator's (see `label_images`).
        **finetune_overrides: the retraining round's `FinetuneConfig` fields.

    Returns:
        `{"labelled": summary, "heldout_retrained": summary, "heldout_base": summary, "retrain": {...},
        "round_stats": [...], "logs": {...}}` with `summarize` summaries.
    """
    from PIL import Image

    from ..data.synthetic import generate_sample

    work = Path(work_dir)
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    ground_truth = {}
    draws = [("train", i) for i in range(num_images)] + [("test", i) for i in range(num_heldout)]
    for position, (split, index) in enumerate(draws):
        sample = generate_sample(index, split, domain, image_size)
        # sorted names keep the labelled images first, the held-out ones after
        Image.fromarray(sample.image).save(images / f"{position:05d}-{split}-{index}.png")
        ground_truth[position] = sample.masks
    labelled = {i: ground_truth[i] for i in range(num_images)}
    heldout = {i: ground_truth[i] for i in range(num_images, num_images + num_heldout)}
    annotator = {
        "seed": seed,
        "target_iou": target_iou,
        "max_clicks": max_clicks,
        "label_iou": label_iou,
        "max_strokes": max_strokes,
    }

    with LabelSession(model, images, work / "labels") as session:
        before = label_images(session, labelled, **annotator)
        job = session.start_retrain(**finetune_overrides)
        job.wait()
        session.poll_retrain()
        after = label_images(session, heldout, **annotator)
        round_stats = session.round_stats()
    with LabelSession(model, images, work / "baseline") as baseline:
        base = label_images(baseline, heldout, **annotator)
    return {
        "labelled": summarize(before, max_clicks),
        "heldout_retrained": summarize(after, max_clicks),
        "heldout_base": summarize(base, max_clicks),
        "retrain": {"round": job.round, "num_masks": job.num_masks, "output_dir": str(job.output_dir)},
        "round_stats": round_stats,
        "logs": {
            "labelled": [asdict(log) for log in before],
            "heldout_retrained": [asdict(log) for log in after],
            "heldout_base": [asdict(log) for log in base],
        },
    }
