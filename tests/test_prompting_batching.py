"""Ragged prompt batching (`sam_hf.prompting.batching`) and the batched correction-click round."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_hf.modeling import prompt_encoder
from sam_hf.prompting.batching import PAD_LABEL, append_points, pad_points
from sam_hf.prompting.simulation import correction_clicks, sample_correction_click


def test_pad_label_is_the_prompt_encoders():
    assert PAD_LABEL == prompt_encoder.PAD_LABEL == -10


def test_pad_points_stacks_ragged_lists_with_the_pad_label():
    prompts = [
        (np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 0])),
        (np.zeros((0, 2)), np.zeros(0)),  # a box prompt: no points
        (np.array([[5.0, 6.0]]), np.array([1])),
    ]
    coords, labels = pad_points(prompts)
    assert coords.shape == (3, 2, 2) and coords.dtype == np.float32
    assert labels.dtype == np.int64
    assert labels.tolist() == [[1, 0], [PAD_LABEL, PAD_LABEL], [1, PAD_LABEL]]
    np.testing.assert_array_equal(coords[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(coords[2], [[5, 6], [0, 0]])
    wide, wide_labels = pad_points(prompts, num_points=4)
    assert wide.shape == (3, 4, 2) and (wide_labels[:, 2:] == PAD_LABEL).all()
    empty, empty_labels = pad_points([(np.zeros((0, 2)), np.zeros(0))])
    assert empty.shape == (1, 1, 2) and empty_labels.tolist() == [[PAD_LABEL]]


def test_pad_points_rejects_bad_input():
    with pytest.raises(ValueError, match=r"num_points must be at least the longest point list \(2\), got 1"):
        pad_points([(np.zeros((2, 2)), np.ones(2))], num_points=1)
    with pytest.raises(
        ValueError, match=r"prompts\[0\] must hold as many coords as labels, got 2 coords and 1"
    ):
        pad_points([(np.zeros((2, 2)), np.ones(1))])


def test_append_points_on_numpy_and_torch():
    coords, labels = pad_points([(np.ones((1, 2)), np.ones(1)), (np.ones((1, 2)), np.ones(1))])
    new_coords, new_labels = np.array([[7.0, 8.0], [0.0, 0.0]]), np.array([0, PAD_LABEL])
    out_coords, out_labels = append_points(coords, labels, new_coords, new_labels)
    assert out_coords.shape == (2, 2, 2) and out_labels.tolist() == [[1, 0], [1, PAD_LABEL]]
    t_coords, t_labels = append_points(
        torch.from_numpy(coords)[None], torch.from_numpy(labels)[None], new_coords[None], new_labels[None]
    )
    assert t_coords.dtype == torch.float32 and t_labels.dtype == torch.int64
    np.testing.assert_array_equal(t_coords[0].numpy(), out_coords)
    np.testing.assert_array_equal(t_labels[0].numpy(), out_labels)


def test_correction_clicks_pad_finished_and_invalid_objects():
    gt = np.zeros((4, 20, 20), dtype=bool)
    gt[:, 5:15, 5:15] = True
    pred = gt.copy()
    pred[0] = False  # all missed: a positive click
    pred[1, 5:15, 15:20] = True  # a false positive band: a negative click
    # pred[2] is exact: no click; object 3 is marked invalid (a padded prompt)
    pred[3] = False
    coords, labels = correction_clicks(pred, gt, np.random.default_rng(0), valid=[True, True, True, False])
    assert labels.tolist() == [1, 0, PAD_LABEL, PAD_LABEL]
    x, y = coords[0].astype(int)
    assert gt[0, y, x] and not pred[0, y, x]
    x, y = coords[1].astype(int)
    assert pred[1, y, x] and not gt[1, y, x]
    np.testing.assert_array_equal(coords[2:], 0)
    # the same clicks as sample_correction_click drawn in object order from the same generator
    rng = np.random.default_rng(0)
    for k in (0, 1):
        coord, label = sample_correction_click(pred[k], gt[k], rng)
        np.testing.assert_array_equal(coord, coords[k])
        assert label == labels[k]
    # an empty ground truth under a non-empty prediction: a negative click
    _, labels = correction_clicks(pred[1:2], np.zeros_like(gt[1:2]), np.random.default_rng(0))
    assert labels.tolist() == [0]
    with pytest.raises(ValueError, match=r"valid must have the masks' batch shape \(4,\), got \(2,\)"):
        correction_clicks(pred, gt, np.random.default_rng(0), valid=[True, False])
