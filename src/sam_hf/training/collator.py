"""Batches of training inputs for `SamHFModel`, with prompts simulated per example and epoch.

Each example is a dataset row (see `training.data`) plus an `example_index` column (added by
`add_example_index`). Its prompts are drawn from `np.random.default_rng((seed, epoch, example_index))`, so
a batch is the same whatever the worker, process or resume point, and changes from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.reader import to_instances
from ..modeling.loss import IGNORE_INDEX
from ..prompting.batching import PAD_LABEL, append_points, pad_points
from ..prompting.simulation import correction_clicks, sample_box, sample_points

__all__ = [
    "EMBEDDINGS_COLUMN",
    "INDEX_COLUMN",
    "PROMPT_TYPES",
    "SamTrainingCollator",
    "add_correction_click",
    "add_example_index",
    "epoch_callback",
]

INDEX_COLUMN = "example_index"
EMBEDDINGS_COLUMN = "image_embeddings"
PROMPT_TYPES = ("box", "point")


def add_example_index(dataset):
    """`dataset` with an `example_index` column (row number) that seeds the prompt simulation."""
    return dataset.map(lambda _, index: {INDEX_COLUMN: index}, with_indices=True, desc="Indexing examples")


class SamTrainingCollator:
    """Turn dataset rows into `SamHFModel.forward` keyword arguments with `labels`.

    Per example, up to `max_prompts` instances are drawn; each gets a prompt type drawn from
    `prompt_types` (`"box"`: a jittered box; `"point"`: `num_points` positive points). Prompts are padded
    across the batch: points with `PAD_LABEL` (`prompting.batching`), boxes with NaN rows, and the `labels`
    of padded prompts with `IGNORE_INDEX`.

    Args:
        processor: a `SamHFProcessor` (image preprocessing, coordinate transform, mask targets).
        prompt_types: subset of `PROMPT_TYPES`.
        max_prompts: instances per image and step.
        num_points: positive points per point prompt.
        box_jitter: noise of the box coordinates as a fraction of the box side.
        image_column, mask_column, mask_format: as in `training.data.to_instances`.
        seed: base seed of the prompt simulation.
        use_cached_embeddings: read the image features from the rows (`training.embeddings` caches them)
            instead of producing `pixel_values`.
        image_feature_names: the model's `image_feature_names`, the columns read with `use_cached_embeddings`
            (`image_embeddings`; SAM-HQ's decoder also `intermediate_embeddings`), each passed to the model
            under its name.
    """

    def __init__(
        self,
        processor: Any,
        prompt_types: Sequence[str] = PROMPT_TYPES,
        max_prompts: int = 8,
        num_points: int = 1,
        box_jitter: float = 0.1,
        image_column: str = "image",
        mask_column: str = "label",
        mask_format: str = "auto",
        seed: int = 0,
        use_cached_embeddings: bool = False,
        image_feature_names: Sequence[str] = (EMBEDDINGS_COLUMN,),
    ):
        unknown = sorted(set(prompt_types) - set(PROMPT_TYPES))
        if not prompt_types or unknown:
            raise ValueError(
                f"prompt_types must be a non-empty subset of {PROMPT_TYPES}, got {list(prompt_types)}"
            )
        if max_prompts < 1 or num_points < 1:
            raise ValueError(f"max_prompts and num_points must be >= 1, got {max_prompts} and {num_points}")
        self.processor = processor
        self.prompt_types = tuple(prompt_types)
        self.max_prompts = max_prompts
        self.num_points = num_points
        self.box_jitter = box_jitter
        self.image_column = image_column
        self.mask_column = mask_column
        self.mask_format = mask_format
        self.seed = seed
        self.use_cached_embeddings = use_cached_embeddings
        self.image_feature_names = tuple(image_feature_names)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the prompts of epoch `epoch` from now on."""
        self.epoch = int(epoch)

    def _example_prompts(self, example: dict) -> dict:
        if INDEX_COLUMN not in example:
            raise ValueError(
                f"examples need an {INDEX_COLUMN!r} column; add it with add_example_index(dataset)"
            )
        rng = np.random.default_rng((self.seed, self.epoch, int(example[INDEX_COLUMN])))
        image, masks = to_instances(example, self.image_column, self.mask_column, self.mask_format)
        chosen = rng.permutation(len(masks))[: self.max_prompts]
        size = image.shape[:2]
        points, boxes, targets = [], [], []
        for i in chosen:
            kind = self.prompt_types[rng.integers(len(self.prompt_types))]
            if kind == "box":
                box = self.processor.transform_boxes(sample_box(masks[i], rng, self.box_jitter), size)
                boxes.append(torch.as_tensor(box, dtype=torch.float32))
                points.append(None)
            else:
                coords, labels = sample_points(masks[i], rng, num_positive=self.num_points)
                coords = self.processor.transform_coords(coords, size)
                points.append((coords, labels))
                boxes.append(None)
            targets.append(self.processor.mask_to_label(masks[i], size))
        return {"image": image, "points": points, "boxes": boxes, "targets": targets}

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prepared = [self._example_prompts(example) for example in examples]
        batch_size = len(prepared)
        num_prompts = max(len(p["targets"]) for p in prepared)
        mask_size = prepared[0]["targets"][0].shape[-1]

        # (B, P, N, 2) XY model frame, (B, P, N), (B, P, 4) XYXY model frame, (B, P, ms, ms)
        no_points = (np.zeros((0, 2)), np.zeros(0))
        per_prompt = [
            (example["points"][p] if p < len(example["points"]) else None) or no_points
            for example in prepared
            for p in range(num_prompts)
        ]
        coords, point_labels = pad_points(per_prompt, num_points=self.num_points)
        input_points = torch.from_numpy(coords).reshape(batch_size, num_prompts, self.num_points, 2)
        input_labels = torch.from_numpy(point_labels).reshape(batch_size, num_prompts, self.num_points)
        input_boxes = torch.full((batch_size, num_prompts, 4), float("nan"))
        labels = torch.full((batch_size, num_prompts, mask_size, mask_size), float(IGNORE_INDEX))
        for b, example in enumerate(prepared):
            for p, target in enumerate(example["targets"]):
                labels[b, p] = target
                if example["boxes"][p] is not None:
                    input_boxes[b, p] = example["boxes"][p]

        batch: dict[str, torch.Tensor] = {"labels": labels}
        if (input_labels != PAD_LABEL).any():
            batch["input_points"], batch["input_labels"] = input_points, input_labels
        if not input_boxes.isnan().all():
            batch["input_boxes"] = input_boxes
        if self.use_cached_embeddings:
            for name in self.image_feature_names:
                if name not in examples[0]:
                    raise ValueError(
                        f"examples need a cached {name!r} column (the model's image_feature_names are "
                        f"{list(self.image_feature_names)}; training.embeddings.cache_image_embeddings adds them), "
                        f"got columns {sorted(examples[0])}"
                    )
                batch[name] = torch.stack(
                    [torch.as_tensor(np.asarray(example[name]), dtype=torch.float32) for example in examples]
                )
        else:
            batch["pixel_values"] = self.processor.preprocess_images([p["image"] for p in prepared])[0]
        return batch


def add_correction_click(
    batch: dict[str, torch.Tensor],
    pred_masks: torch.Tensor,
    iou_scores: torch.Tensor,
    image_features: dict[str, torch.Tensor],
    rng: np.random.Generator,
    image_size: int,
) -> dict[str, torch.Tensor]:
    """The next round of SAM's interactive training: one corrective click per prompt, previous mask fed back.

    For each prompt the output with the highest predicted IoU is the previous prediction; a click is drawn
    from its larger error region against `labels` (`prompting.simulation.correction_clicks`, at mask
    resolution) and appended to the prompt's points; its logits become `input_masks`. Padded prompts (labels
    all `IGNORE_INDEX`) and prompts predicted exactly get a padding point.

    Args:
        batch: model inputs of the previous pass (`labels` `(B, P, ms, ms)` and the prompts).
        pred_masks: `(B, P, M, ms, ms)` and iou_scores: `(B, P, M)` of the previous pass.
        image_features: the image features of the previous pass by name (the model's `image_feature_names`,
            e.g. `image_embeddings` `(B, C, g, g)`), used instead of `pixel_values`.
        rng: source of the clicks.
        image_size: model input size (clicks are scaled from mask to model coordinates).

    Returns:
        The inputs of the next pass (without gradients through the previous prediction).
    """
    labels = batch["labels"]
    B, P, ms, _ = labels.shape
    best = iou_scores.argmax(-1)[..., None, None, None].expand(B, P, 1, ms, ms)
    previous = pred_masks.gather(2, best).squeeze(2).detach()  # (B, P, ms, ms)
    real = (labels != IGNORE_INDEX).flatten(2).any(-1)  # (B, P), False for padded prompts
    clicks, click_labels = correction_clicks(
        (previous > 0).cpu().numpy(), (labels > 0.5).cpu().numpy(), rng, valid=real.cpu().numpy()
    )
    device = labels.device
    points = batch.get("input_points", torch.zeros(B, P, 0, 2, device=device))
    point_labels = batch.get("input_labels", torch.zeros(B, P, 0, dtype=torch.long, device=device))
    following = {key: value for key, value in batch.items() if key != "pixel_values"}
    following.update({name: feature.detach() for name, feature in image_features.items()})
    following["input_points"], following["input_labels"] = append_points(
        points, point_labels, clicks * (image_size / ms), click_labels
    )
    following["input_masks"] = previous
    return following


def epoch_callback(collator: SamTrainingCollator):
    """A `transformers.TrainerCallback` that moves `collator` to each new epoch (pass it in `callbacks`).

    With `dataloader_num_workers > 0` use `dataloader_persistent_workers=False` so workers see the epoch.
    """
    from transformers import TrainerCallback

    class _SetEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            collator.set_epoch(round(state.epoch or 0))

    return _SetEpoch()
