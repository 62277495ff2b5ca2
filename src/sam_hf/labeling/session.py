"""The labelling session: the state machine of SAM's assisted-manual and semi-automatic data-engine stages.

`LabelSession` is what the browser app (`sam_hf.labeling.app`), the simulated annotator
(`sam_hf.labeling.simulated`) and scripts drive; it holds no UI code. Per image, the embedding is computed
once (`SamPredictor.set_image`); every click then runs only the prompt encoder and mask decoder, with the
previous prediction's low-resolution logits fed back as the mask prompt, as in SAM's interactive setting
(Kirillov et al., "Segment Anything", 2023, sec. 3 and appendix A): the first click alone yields the three
multimask candidates, later prompts one mask refined from the chosen candidate. A brush and an eraser
(`brush`, `paint`) then fix what the clicks do not, pixel-precise, as SA-1B's annotators could (same
section): strokes are kept over the model's mask through later clicks, and undone one at a time.

Stages of an accepted mask (`sam_hf.labeling.store.STAGES`): clicks in `"manual"` mode make `"manual"` masks;
`prefill` switches to `"semi"` mode, where the generator's confident masks are drawn (accepted unchanged they
are `"auto"`) and clicks add the missing objects (`"semi"`), their masks cut to what no accepted or pre-filled
mask covers yet.

The module is longer than most because it is one state machine: every transition (click, box, undo, accept,
delete, prefill, image change, model swap) reads and writes the same per-image state, which a split would
scatter across files.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.coco import DEFAULT_CATEGORY, annotation_geometry
from ..data.images import to_rgb
from ..data.rle import mask_to_rle, rle_to_mask
from ..data.sources import open_images
from ..hub.loading import update_digest
from ..inference.amg_utils import calculate_stability_score
from ..inference.predictor import SamPredictor
from .store import STAGES, LabelStore

__all__ = ["LabelSession", "LabelledObject", "PrefilledMask", "Proposal"]

MODES = ("manual", "semi")
_IN_MEMORY = "in-memory model"  # model_id of a (model, processor) pair without a name_or_path
_STABILITY_OFFSET = 1.0  # logit offset of SAM's stability score, as the automatic generator's default


@dataclass
class Proposal:
    """The mask(s) the current prompts give on the current image.

    Attributes:
        masks: `(C, H, W)` bool candidates of the model in image pixels; C = 3 for a single click (SAM's
            multimask output), else 1. The mask shown and accepted is `mask`: the selected one with the brush
            strokes applied.
        iou_predictions: `(C,)` the model's predicted IoU of each candidate.
        stability_scores: `(C,)` SAM's stability score of each candidate (IoU of the masks binarised at the
            mask threshold plus and minus 1.0 in logits).
        low_res_logits: `(C, mask_size, mask_size)` logits; the selected one is the next prompt's mask input.
        selected: index of the chosen candidate (highest predicted IoU at first).
        point_coords: `(N, 2)` XY pixels of the clicks, in order; point_labels: `(N,)` 1 positive, 0 negative.
        box: `(4,)` XYXY pixels, or None.
        num_clicks: prompts given: clicks plus one for a box.
        painted, erased: `(H, W)` bool pixels added by the brush and removed by the eraser (None: no stroke).
        num_strokes: brush and eraser strokes made.
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    stability_scores: np.ndarray
    low_res_logits: np.ndarray
    selected: int
    point_coords: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    num_clicks: int
    painted: np.ndarray | None = None
    erased: np.ndarray | None = None
    num_strokes: int = 0

    @property
    def mask(self) -> np.ndarray:
        """`(H, W)` bool: the selected candidate, plus the painted pixels, minus the erased ones."""
        mask = self.masks[self.selected]
        if self.painted is not None:
            mask = mask | self.painted
        if self.erased is not None:
            mask = mask & ~self.erased
        return mask


@dataclass
class LabelledObject:
    """An accepted mask of the current image, as stored (see `sam_hf.labeling.store`).

    Attributes:
        id: number of the object on its image (stable across deletes).
        mask: `(H, W)` bool.
        class_name: the class name given by the annotator, the mask's COCO category ("" when none was
            given: category `sam_hf.data.coco.DEFAULT_CATEGORY`).
        stage: one of `STAGES`.
        num_clicks: prompts that made it (0 for an accepted automatic mask).
        num_strokes: brush and eraser strokes that corrected it.
        seconds: annotator time spent on it: from the previous accept, delete or image change to this accept.
        model_id, model_revision: the model that made it (`LabelSession.model_id`, `.model_revision`).
        round: the labelling round (`LabelSession.round`) it was made in.
    """

    id: int
    mask: np.ndarray
    class_name: str
    stage: str
    num_clicks: int
    num_strokes: int
    seconds: float
    model_id: str
    model_revision: str
    round: int


@dataclass
class PrefilledMask:
    """A confident mask of the automatic generator, offered in semi-automatic mode.

    Attributes:
        mask: `(H, W)` bool; predicted_iou, stability_score: the generator's scores;
        bbox: XYWH pixels; point_coords: `(2,)` XY of the grid point that prompted it.
    """

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    bbox: list[float]
    point_coords: list[float]


@dataclass
class _Timer:
    start: float = field(default_factory=time.perf_counter)

    def restart(self) -> float:
        """Seconds since the last restart; restarts."""
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


class LabelSession:
    """Label images with SAM: clicks and boxes -> masks, accepted masks written to `out` at once.

    Args:
        model: any form `sam_hf.hub.load_model` accepts (shipped name such as `"sam-hf-tiny"`, Hub id, Meta
            `.pth`, sam_hf / transformers / adapter / `sam-hf finetune` output folder) or what
            `sam_hf.hub.locate_model` made of one, a loaded model
            (`SamHFModel` or a PEFT model wrapping one; its processor from its config, as `SamPredictor`
            makes it), or a `(model, processor)` pair already loaded.
        images: a folder of images, a `load_from_disk` dataset folder (e.g. `sam-hf annotate` output; all
            splits) or a `datasets.Dataset`/`DatasetDict` with an `image` column.
        out: the dataset folder to write (layout in `sam_hf.labeling.store`); an existing one is resumed.
        device: torch device for the model (default: CUDA when available, else CPU).
        test_fraction: share of the labelled images put in the `test` split of `out`.

    Raises:
        DatasetLockedError: another live process labels `out` (the message names it).
        ValueError: `images` holds no image, or `out` holds labels of other images.
    """

    def __init__(
        self,
        model: Any,
        images: Any,
        out: str | os.PathLike,
        device: str | torch.device | None = None,
        *,
        test_fraction: float = 0.2,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded_model, processor, self.model_id, self.model_revision = _load(model)
        self._base_model_id = self.model_id  # what every retraining round fine-tunes
        source = open_images(images)
        self.store = LabelStore(out, source, test_fraction)
        try:
            self._use_model(loaded_model, processor)
            self._mode = "manual"
            self._retrain_job = None
            self.image_index = -1
            self._dirty = False
            self.store.materialize()
            self.go_to(min(self.first_unfinished(), self.num_images - 1))
        except BaseException:
            self.store.release()
            raise

    # ------------------------------------------------------------------------------------------ model

    def _use_model(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model.to(self.device).eval()
        self.predictor = SamPredictor(self.model, processor)
        self.round = self.store.start_round(self.model_id, self.model_revision)

    # ----------------------------------------------------------------------------------------- images

    @property
    def num_images(self) -> int:
        return len(self.store.source)

    @property
    def image_name(self) -> str:
        """The current image's name (path relative to the image folder, or the dataset's `file_name`)."""
        return self.store.source.names[self.image_index]

    @property
    def out(self) -> Path:
        return self.store.out

    def first_unfinished(self) -> int:
        """Index of the first image not finished (`num_images` when all are): where a session resumes."""
        return self.store.first_unfinished()

    def go_to(self, index: int) -> None:
        """Show image `index` (0-based): encode it once, drop the prompts in progress and the pre-filled masks.

        Raises:
            IndexError: `index` is not in `[0, num_images)`.
        """
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_images:
            raise IndexError(f"index must be an int in [0, {self.num_images}), got {index!r}")
        if self._dirty:
            self.store.materialize()
            self._dirty = False
        if index != self.image_index:
            self.image = to_rgb(self.store.source.load(int(index)), self.store.source.names[int(index)])
            self.predictor.set_image(self.image)
            self.image_index = int(index)
        self._record = self.store.record(self.image_index)
        self._record["height"], self._record["width"] = self.image.shape[:2]
        self._history: list[Proposal] = []
        self.prefilled: list[PrefilledMask] = []
        self._covered: tuple[tuple[Any, ...], np.ndarray | None] = ((), None)  # see `covered`
        self._timer = _Timer()

    def next_image(self) -> None:
        """Show the next image (stays on the last one)."""
        self.go_to(min(self.image_index + 1, self.num_images - 1))

    def previous_image(self) -> None:
        """Show the previous image (stays on the first one)."""
        self.go_to(max(self.image_index - 1, 0))

    def finish_image(self) -> None:
        """Mark the current image finished: a resumed session starts after it."""
        self._write({**self._record, "finished": True})

    # ---------------------------------------------------------------------------------------- prompts

    @property
    def mode(self) -> str:
        """`"manual"` or `"semi"` (set by `prefill`, or directly)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        self._mode = value

    @property
    def proposal(self) -> Proposal | None:
        """The current mask proposal (None before the first prompt of an object)."""
        return self._history[-1] if self._history else None

    def add_click(self, x: float, y: float, positive: bool = True) -> Proposal:
        """Add a click at `(x, y)` XY pixels of the image (positive: on the object; negative: not on it).

        The previous proposal's selected low-resolution logits are the mask input; a first click alone gives
        three candidates, later prompts one.

        Raises:
            ValueError: the point is outside the image.
        """
        height, width = self.image.shape[:2]
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"click (x, y) must lie in the image [0, {width}) x [0, {height}), got ({x}, {y})"
            )
        previous = self.proposal
        coords = np.zeros((0, 2), np.float32) if previous is None else previous.point_coords
        labels = np.zeros((0,), np.int64) if previous is None else previous.point_labels
        return self._predict(
            np.concatenate([coords, np.array([[x, y]], np.float32)]),
            np.concatenate([labels, np.array([int(bool(positive))])]),
            None if previous is None else previous.box,
        )

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> Proposal:
        """Set (or replace) the box prompt, XYXY pixels (corners in any order), keeping the clicks.

        Raises:
            ValueError: the box has no area inside the image.
        """
        height, width = self.image.shape[:2]
        box = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], np.float32)
        if (
            box[2] <= box[0]
            or box[3] <= box[1]
            or box[2] <= 0
            or box[3] <= 0
            or box[0] >= width
            or box[1] >= height
        ):
            raise ValueError(
                f"box must be XYXY pixels with an area inside the image {width}x{height}, got {[x0, y0, x1, y1]}"
            )
        np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1], out=box)
        previous = self.proposal
        coords = np.zeros((0, 2), np.float32) if previous is None else previous.point_coords
        labels = np.zeros((0,), np.int64) if previous is None else previous.point_labels
        return self._predict(coords, labels, box)

    def select_candidate(self, index: int) -> Proposal:
        """Choose candidate `index` of the current proposal (the one accepted and fed to the next click).

        Raises:
            RuntimeError: there is no proposal. IndexError: no such candidate.
        """
        proposal = self._require_proposal("select a candidate")
        if not 0 <= index < len(proposal.masks):
            raise IndexError(f"index must be in [0, {len(proposal.masks)}), got {index!r}")
        proposal.selected = int(index)
        return proposal

    def brush(self, x: float, y: float, radius: float, erase: bool = False) -> Proposal:
        """One dab of a round brush (or eraser) of `radius` pixels centred at `(x, y)` XY pixels: `paint` of
        that disc.

        Raises:
            RuntimeError: there is no proposal. ValueError: the centre is outside the image or radius <= 0.
        """
        height, width = self.image.shape[:2]
        if not (0 <= x < width and 0 <= y < height) or not radius > 0:
            raise ValueError(
                f"brush centre (x, y) must lie in the image [0, {width}) x [0, {height}) and radius be > 0, "
                f"got ({x}, {y}), radius {radius}"
            )
        ys, xs = np.ogrid[:height, :width]
        return self.paint((xs - x) ** 2 + (ys - y) ** 2 <= radius**2, erase=erase)

    def paint(self, region: np.ndarray, erase: bool = False) -> Proposal:
        """One stroke: add `region` (`(H, W)` bool, image pixels) to the pending mask, or remove it
        (`erase`). Later clicks keep the strokes over the model's new mask; `undo` removes the last stroke.
        In semi-automatic mode painting skips the pixels of accepted and pre-filled masks.

        Raises:
            RuntimeError: there is no proposal (click or draw a box first). ValueError: `region` is not an
            `(H, W)` bool array of the image's size.
        """
        proposal = self._require_proposal("paint")
        region = np.asarray(region)
        if region.dtype != bool or region.shape != self.image.shape[:2]:
            raise ValueError(
                f"region must be a bool array of the image's shape {self.image.shape[:2]}, got "
                f"{region.dtype} {region.shape}"
            )
        painted, erased = proposal.painted, proposal.erased
        if erase:
            erased = region if erased is None else erased | region
            painted = None if painted is None else painted & ~region
        else:
            if self._mode == "semi":
                region = region & ~self.covered()
            painted = region if painted is None else painted | region
            erased = None if erased is None else erased & ~region
        stroked = replace(proposal, painted=painted, erased=erased, num_strokes=proposal.num_strokes + 1)
        self._history.append(stroked)
        return stroked

    def undo(self) -> Proposal | None:
        """Remove the last click, box or stroke: back to the previous proposal (None when nothing is left)."""
        if self._history:
            self._history.pop()
        return self.proposal

    def clear_prompts(self) -> None:
        """Drop the object in progress."""
        self._history = []

    def _predict(self, coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None) -> Proposal:
        previous = self.proposal
        mask_input = None if previous is None else previous.low_res_logits[[previous.selected]]
        multimask = box is None and len(coords) == 1
        logits, iou_predictions, low_res = self.predictor.predict(
            point_coords=coords if len(coords) else None,
            point_labels=labels if len(coords) else None,
            box=box,
            mask_input=mask_input,
            multimask_output=multimask,
            return_logits=True,
        )
        threshold = self.model.mask_threshold
        logits_tensor = torch.from_numpy(logits)
        stability = calculate_stability_score(logits_tensor, threshold, _STABILITY_OFFSET).numpy()
        masks = logits > threshold
        if self._mode == "semi":
            masks &= ~self.covered()
        proposal = Proposal(
            masks=masks,
            iou_predictions=iou_predictions,
            stability_scores=stability,
            low_res_logits=low_res,
            selected=int(np.argmax(iou_predictions)),
            point_coords=coords,
            point_labels=labels,
            box=box,
            num_clicks=len(coords) + (box is not None),
        )
        if previous is not None:  # strokes stay over the model's new mask
            proposal.painted, proposal.erased = previous.painted, previous.erased
            proposal.num_strokes = previous.num_strokes
        self._history.append(proposal)
        return proposal

    def covered(self) -> np.ndarray:
        """`(H, W)` bool, read-only: pixels of the accepted objects and of the pre-filled masks still offered.

        Every click and stroke of the semi-automatic mode reads it, so it is rebuilt only when the accepted
        objects or the offered masks change (each change makes new objects: the check is by identity)."""
        sources = (self._record["annotations"], *self.prefilled)
        built_from, covered = self._covered
        if len(sources) != len(built_from) or any(
            a is not b for a, b in zip(sources, built_from, strict=True)
        ):
            covered = np.zeros(self.image.shape[:2], bool)
            for annotation in self._record["annotations"]:
                covered |= rle_to_mask(annotation["segmentation"])
            for candidate in self.prefilled:
                covered |= candidate.mask
            covered.flags.writeable = False
            self._covered = (sources, covered)
        return covered

    # ---------------------------------------------------------------------------------------- objects

    @property
    def objects(self) -> list[LabelledObject]:
        """The accepted objects of the current image, in the order accepted."""
        return [_labelled_object(a) for a in self._record["annotations"]]

    def accept(self, class_name: str | None = None) -> LabelledObject:
        """Accept the selected mask of the proposal as an object; it is on disk when this returns.

        Raises:
            RuntimeError: there is no proposal. ValueError: the selected mask is empty.
        """
        proposal = self._require_proposal("accept")
        mask = proposal.mask
        if not mask.any():
            raise ValueError("the selected mask is empty: add a positive click on the object, or undo")
        positive = proposal.point_coords[proposal.point_labels == 1]
        # the record's prompt point: the first positive click, else the box centre, else the first click
        if len(positive) or proposal.box is None:
            point = (positive if len(positive) else proposal.point_coords)[0].tolist()
        else:
            x0, y0, x1, y1 = proposal.box.tolist()
            point = [(x0 + x1) / 2, (y0 + y1) / 2]
        annotation = self._annotation(
            mask,
            predicted_iou=float(proposal.iou_predictions[proposal.selected]),
            stability_score=float(proposal.stability_scores[proposal.selected]),
            point_coords=point,
            stage=self._mode,
            num_clicks=proposal.num_clicks,
            num_strokes=proposal.num_strokes,
            class_name=class_name,
        )
        self._history = []
        return _labelled_object(annotation)

    def delete_object(self, object_id: int) -> None:
        """Delete accepted object `object_id` of the current image (on disk when this returns).

        Raises:
            KeyError: no object with this id on the current image.
        """
        annotations = self._record["annotations"]
        kept = [a for a in annotations if a["id"] != object_id]
        if len(kept) == len(annotations):
            raise KeyError(f"object_id must be one of {[a['id'] for a in annotations]}, got {object_id!r}")
        self._write({**self._record, "annotations": kept})
        self._timer.restart()

    def _annotation(self, mask: np.ndarray, **fields: Any) -> dict[str, Any]:
        """Store a new object of the current image and return its annotation record."""
        class_name = fields.pop("class_name")
        category_id = self.store.category_id(class_name)
        annotation = {
            "id": max((a["id"] for a in self._record["annotations"]), default=0) + 1,
            **annotation_geometry(mask_to_rle(mask)),
            "category_id": category_id,
            "category": class_name or DEFAULT_CATEGORY,
            "iscrowd": 0,
            "crop_box": [0, 0, int(mask.shape[1]), int(mask.shape[0])],
            **fields,
            "seconds": round(self._timer.restart(), 3),
            "model_id": self.model_id,
            "model_revision": self.model_revision,
            "round": self.round,
        }
        self._write({**self._record, "annotations": [*self._record["annotations"], annotation]})
        return annotation

    def _write(self, record: dict[str, Any]) -> None:
        """Store the current image's new record; the session shows it only once it is on disk."""
        self.store.write_record(record)
        self._record = record
        self._dirty = True

    def _require_proposal(self, action: str) -> Proposal:
        if self.proposal is None:
            raise RuntimeError(
                f"cannot {action}: no mask yet; click on an object (add_click) or draw a box first"
            )
        return self.proposal

    # ---------------------------------------------------------------------------------- semi-automatic

    def prefill(
        self,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        points_per_side: int = 32,
        max_overlap: float = 0.2,
    ) -> list[PrefilledMask]:
        """Switch to semi-automatic mode and offer the automatic generator's confident masks.

        `SamAutomaticMaskGenerator` runs on the current image with these thresholds; a mask whose area is
        more than `max_overlap` covered by accepted objects is left out, and the rest lose the covered pixels.
        The result replaces `self.prefilled`.

        Returns:
            `self.prefilled`, highest predicted IoU first.
        """
        from ..inference.automatic_mask_generator import SamAutomaticMaskGenerator

        if not 0.0 <= max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap!r}")
        self.mode = "semi"
        self.prefilled = []
        generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            processor=self.predictor.processor,
        )
        accepted = self.covered()
        candidates = []
        for record in generator.generate(self.image, image_features=self.predictor.image_features):
            mask = record["segmentation"]
            if (mask & accepted).sum() > max_overlap * mask.sum():
                continue
            mask = mask & ~accepted
            if mask.any():
                candidates.append(
                    PrefilledMask(
                        mask=mask,
                        predicted_iou=record["predicted_iou"],
                        stability_score=record["stability_score"],
                        bbox=record["bbox"],
                        point_coords=record["point_coords"][0],
                    )
                )
        self.prefilled = sorted(candidates, key=lambda c: -c.predicted_iou)
        return self.prefilled

    def accept_prefilled(self, index: int, class_name: str | None = None) -> LabelledObject:
        """Accept `self.prefilled[index]` unchanged as an `"auto"` object and remove it from the offer.

        Raises:
            IndexError: no such pre-filled mask.
        """
        candidate = self._pop_prefilled(index)
        annotation = self._annotation(
            candidate.mask,
            predicted_iou=candidate.predicted_iou,
            stability_score=candidate.stability_score,
            point_coords=list(candidate.point_coords),
            stage="auto",
            num_clicks=0,
            num_strokes=0,
            class_name=class_name,
        )
        return _labelled_object(annotation)

    def reject_prefilled(self, index: int) -> None:
        """Remove `self.prefilled[index]` from the offer (indices of later ones shift down by one).

        Raises:
            IndexError: no such pre-filled mask.
        """
        self._pop_prefilled(index)

    def _pop_prefilled(self, index: int) -> PrefilledMask:
        if not 0 <= index < len(self.prefilled):
            raise IndexError(
                f"index must be in [0, {len(self.prefilled)}) (pre-filled masks offered), got {index!r}"
            )
        return self.prefilled.pop(index)

    # --------------------------------------------------------------------------------------- retraining

    def start_retrain(self, **finetune_overrides: Any):
        """Fine-tune the session's starting model on all masks accepted so far, in a background thread.

        Args:
            **finetune_overrides: fields of `sam_hf.training.FinetuneConfig` (e.g. `max_steps`, `lora_r`).

        Returns:
            The `sam_hf.labeling.retrain.RetrainJob` (its `progress`, `message`, `done`, `error`);
            `poll_retrain` swaps its model in when it is done.

        Raises:
            RuntimeError: a retraining round is already running, or no mask is accepted yet.
        """
        from .retrain import start_retrain

        if self._retrain_job is not None and not self._retrain_job.done:
            raise RuntimeError("a retraining round is already running; wait for it (poll_retrain)")
        self._dirty = True
        if self._base_model_id == _IN_MEMORY:
            raise RuntimeError(
                "cannot retrain a model given as a (model, processor) pair without a loadable name_or_path; "
                "start the session with the model's name or folder"
            )
        self._retrain_job = start_retrain(self.store, self._base_model_id, **finetune_overrides)
        return self._retrain_job

    @property
    def retrain_job(self):
        """The last retraining job started (None if none)."""
        return self._retrain_job

    def poll_retrain(self) -> bool:
        """If the retraining job finished well, switch to its model (a new round); True exactly once then.

        The current image is encoded again and the prompts in progress are replayed with the new model.

        Raises:
            RuntimeError: the job failed (its error is the cause).
        """
        job = self._retrain_job
        if job is None or not job.done or job.swapped:
            return False
        if job.error is not None:
            job.swapped = True
            raise RuntimeError(f"retraining round failed: {job.error}") from job.error
        model, processor = job.model, job.processor
        self.model_id, self.model_revision = job.model_id, job.model_revision
        self._use_model(model, processor)
        job.swapped = True
        self.predictor.set_image(self.image)
        self._replay()
        return True

    def _replay(self) -> None:
        """Recompute the proposal history with the current model (same prompts, same choices)."""
        history, self._history = self._history, []
        strokes = 0
        for old in history:
            if old.num_strokes != strokes:  # a stroke: the same prompts, new edits
                self._history.append(
                    replace(
                        self.proposal, painted=old.painted, erased=old.erased, num_strokes=old.num_strokes
                    )
                )
            else:
                self._predict(old.point_coords, old.point_labels, old.box)
                if len(self._history[-1].masks) == len(old.masks):
                    self._history[-1].selected = old.selected
            strokes = old.num_strokes

    def round_stats(self) -> list[dict[str, Any]]:
        """Per labelling round: `round`, `model_id`, `objects` (accepted), `clicks_per_object`,
        `strokes_per_object` and `seconds_per_mask` (means over the masks made with clicks, stages manual and
        semi; None without one), and `objects_per_stage`."""
        annotations = [a for record in self.store.records() for a in record["annotations"]]
        stats = []
        for entry in self.store.rounds():
            made = [a for a in annotations if a["round"] == entry["round"]]
            clicked = [a for a in made if a["stage"] != "auto"]
            stats.append(
                {
                    "round": entry["round"],
                    "model_id": entry["model_id"],
                    "objects": len(made),
                    "clicks_per_object": float(np.mean([a["num_clicks"] for a in clicked]))
                    if clicked
                    else None,
                    "strokes_per_object": float(np.mean([a["num_strokes"] for a in clicked]))
                    if clicked
                    else None,
                    "seconds_per_mask": float(np.mean([a["seconds"] for a in clicked])) if clicked else None,
                    "objects_per_stage": {stage: sum(a["stage"] == stage for a in made) for stage in STAGES},
                }
            )
        return stats

    # ----------------------------------------------------------------------------------------- output

    def export(self, push_to_hub: str | None = None, private: bool = False) -> Path:
        """Write the dataset (`load_from_disk(out)`, parquet, COCO `annotations.json`); push it if asked.

        Args:
            push_to_hub: a Hub dataset repo id (`user/name`) to upload the dataset and its card to.
            private: create that repo as private.

        Returns:
            The output folder.

        Raises:
            ValueError: nothing is labelled yet.
        """
        dataset = self.store.materialize()
        if dataset is None:
            raise ValueError(
                f"nothing to export from {str(self.out)!r}: no image has an accepted mask or is finished"
            )
        self._dirty = False
        if push_to_hub:
            from .store import dataset_card

            dataset.push_to_hub(push_to_hub, private=private)
            dataset_card(self.store, push_to_hub).push_to_hub(push_to_hub, repo_type="dataset")
        return self.out

    def close(self) -> None:
        """Write the dataset and release the lock of `out` (idempotent)."""
        if self.store is not None and getattr(self.store, "_locked", False):
            try:
                if self._dirty:
                    self.store.materialize()
                    self._dirty = False
            finally:
                self.store.release()

    def __enter__(self) -> LabelSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _labelled_object(annotation: dict[str, Any]) -> LabelledObject:
    return LabelledObject(
        id=annotation["id"],
        mask=rle_to_mask(annotation["segmentation"]),
        class_name="" if annotation["category"] == DEFAULT_CATEGORY else annotation["category"],
        stage=annotation["stage"],
        num_clicks=annotation["num_clicks"],
        num_strokes=annotation["num_strokes"],
        seconds=annotation["seconds"],
        model_id=annotation["model_id"],
        model_revision=annotation["model_revision"],
        round=annotation["round"],
    )


def _load(model: Any) -> tuple[torch.nn.Module, Any, str, str]:
    """`(model, processor, model_id, model_revision)` of the session's `model` argument."""
    from ..hub.loading import ResolvedModel, load_model

    if isinstance(model, torch.nn.Module):
        model = (model, None)
    if isinstance(model, tuple):
        if len(model) != 2 or not isinstance(model[0], torch.nn.Module):
            raise TypeError(
                "model must be a model name or path, a loaded model, or a (model, processor) pair, got "
                f"{model!r:.200}"
            )
        loaded, processor = model
        name = getattr(loaded, "name_or_path", "") or _IN_MEMORY
        return loaded, processor, name, _weights_digest(loaded)
    if not isinstance(model, (str, os.PathLike, ResolvedModel)):
        raise TypeError(
            "model must be a model name or path, a loaded model, or a (model, processor) pair, got "
            f"{type(model).__name__}"
        )
    loaded, processor, resolved = load_model(model, merge_adapter=True)
    return loaded, processor, resolved.name, model_revision(resolved, loaded)


def model_revision(resolved: Any, model: torch.nn.Module) -> str:
    """A revision string for provenance: the package version of a shipped model, `main` for a Hub repo
    loaded at its default revision, else a digest of the weights (`sha256:<12 hex>`)."""
    from .. import __version__

    if resolved.kind == "shipped":
        return f"sam_hf-{__version__}"
    if resolved.kind == "hub":
        return "main"
    return _weights_digest(model)


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    update_digest(digest, model.state_dict())
    return f"sha256:{digest.hexdigest()[:12]}"
