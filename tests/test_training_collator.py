"""Tests for sam_hf.training.collator: prompt padding, targets and per-epoch seeding."""

import numpy as np
import torch

from sam_hf.modeling.loss import IGNORE_INDEX
from sam_hf.processing_sam_hf import SamHFProcessor
from sam_hf.training.collator import INDEX_COLUMN, SamTrainingCollator


def _example(num_instances, index, height=40, width=60):
    label = np.zeros((height, width), np.uint8)
    for i in range(num_instances):
        label[5 + 10 * i : 12 + 10 * i, 5 + 15 * i : 18 + 15 * i] = i + 1
    image = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return {"image": image, "label": label, INDEX_COLUMN: index}


def test_collator_pads_prompts_and_labels():
    processor = SamHFProcessor(image_size=128, mask_size=32)
    collator = SamTrainingCollator(processor, prompt_types=("point",), num_points=2, seed=0)
    batch = collator([_example(1, 0), _example(3, 1)])
    assert batch["pixel_values"].shape == (2, 3, 128, 128)
    assert batch["input_points"].shape == (2, 3, 2, 2)
    assert batch["input_labels"].shape == (2, 3, 2)
    assert batch["labels"].shape == (2, 3, 32, 32)
    assert "input_boxes" not in batch
    assert (batch["input_labels"][0, 1:] == -10).all() and (batch["input_labels"][0, 0] == 1).all()
    assert (batch["input_labels"][1] == 1).all()
    assert (batch["labels"][0, 1:] == IGNORE_INDEX).all()
    assert set(batch["labels"][1].unique().tolist()) <= {0.0, 1.0}
    # both points of a prompt lie in one instance (model frame 128 -> original width 60)
    label = _example(3, 1)["label"]
    ids = set()
    for p in range(3):
        xy = (batch["input_points"][1, p] * 60 / 128).round().long()
        inside = label[xy[:, 1], xy[:, 0]]
        assert inside[0] != 0 and (inside == inside[0]).all()
        ids.add(int(inside[0]))
    assert ids == {1, 2, 3}


def test_collator_boxes_and_mixed_prompts():
    processor = SamHFProcessor(image_size=128, mask_size=32)
    batch = SamTrainingCollator(processor, prompt_types=("box",))([_example(2, 0), _example(1, 1)])
    assert batch["input_boxes"].shape == (2, 2, 4)
    assert "input_points" not in batch
    assert batch["input_boxes"][1, 1].isnan().all() and not batch["input_boxes"][:, 0].isnan().any()
    mixed = SamTrainingCollator(processor, seed=3)([_example(3, i) for i in range(4)])
    has_box = ~mixed["input_boxes"].isnan().any(-1)
    has_point = (mixed["input_labels"] != -10).any(-1)
    assert (has_box ^ has_point).all()  # each real prompt is exactly one kind
    assert has_box.any() and has_point.any()


def test_collator_is_seeded_by_index_and_epoch():
    processor = SamHFProcessor(image_size=128, mask_size=32)
    collator = SamTrainingCollator(processor, prompt_types=("box",), seed=0)
    first = collator([_example(3, 7)])["input_boxes"]
    torch.testing.assert_close(collator([_example(3, 7)])["input_boxes"], first, rtol=0, atol=0)
    collator.set_epoch(1)
    assert not torch.equal(collator([_example(3, 7)])["input_boxes"], first)
