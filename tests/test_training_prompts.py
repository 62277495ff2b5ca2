"""Tests for sam_hf.prompting.simulation: seeded prompt simulation from binary masks."""

import numpy as np
import pytest

from sam_hf.prompting.simulation import (
    distance_transform,
    sample_box,
    sample_brush_stroke,
    sample_correction_click,
    sample_points,
)


def _disk(height=40, width=50, cy=20, cx=25, r=8):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_sample_box_is_seeded_and_inside_image():
    mask = _disk()
    boxes = [sample_box(mask, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(boxes[0], boxes[1])
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = sample_box(mask, rng, jitter=0.5)
        assert box.shape == (4,)
        assert 0 <= box[0] <= box[2] <= 49 and 0 <= box[1] <= box[3] <= 39
    np.testing.assert_array_equal(sample_box(mask, rng, jitter=0.0), [17, 12, 33, 28])


def test_sample_box_noise_is_clipped_to_max_jitter():
    mask = np.zeros((400, 400), bool)
    mask[100:300, 100:300] = True
    rng = np.random.default_rng(1)
    for _ in range(100):
        box = sample_box(mask, rng, jitter=1.0, max_jitter=20)
        assert np.abs(box - [100, 100, 299, 299]).max() <= 20


def test_sample_points_labels_match_mask():
    mask = _disk()
    coords, labels = sample_points(mask, np.random.default_rng(0), num_positive=5, num_negative=7)
    assert coords.shape == (12, 2) and labels.shape == (12,)
    np.testing.assert_array_equal(labels, [1] * 5 + [0] * 7)
    inside = mask[coords[:, 1].astype(int), coords[:, 0].astype(int)]
    np.testing.assert_array_equal(inside, labels == 1)
    again, _ = sample_points(mask, np.random.default_rng(0), num_positive=5, num_negative=7)
    np.testing.assert_array_equal(coords, again)


def test_sample_points_rejects_bad_input():
    with pytest.raises(ValueError, match="mask"):
        sample_points(np.zeros((4, 4), bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="negative"):
        sample_points(np.ones((4, 4), bool), np.random.default_rng(0), num_negative=1)


def test_distance_transform_matches_brute_force():
    rng = np.random.default_rng(0)
    region = rng.random((13, 17)) < 0.7
    distance = distance_transform(region)
    padded = np.pad(region, 1)
    oy, ox = np.nonzero(~padded)
    expected = np.zeros(region.shape)
    for y, x in zip(*np.nonzero(region), strict=True):
        expected[y, x] = np.sqrt(((oy - (y + 1)) ** 2 + (ox - (x + 1)) ** 2).min())
    np.testing.assert_allclose(distance, expected, atol=1e-12)


def test_correction_click_goes_to_interior_of_larger_error():
    gt = np.zeros((30, 30), bool)
    gt[5:25, 5:25] = True
    pred = np.zeros_like(gt)
    pred[5:25, 5:12] = True  # large false-negative block at columns 12..24
    pred[0:2, 0:2] = True  # small false positive
    coord, label = sample_correction_click(pred, gt, np.random.default_rng(0))
    assert label == 1
    assert coord.shape == (2,)
    assert coord[0] == 18 and 11 <= coord[1] <= 18  # 7 px from every edge of the block
    coord, label = sample_correction_click(gt | _disk(30, 30, 27, 27, 6), gt, np.random.default_rng(0))
    assert label == 0 and not gt[int(coord[1]), int(coord[0])]


def test_brush_dabs_only_turn_wrong_pixels_right_until_the_mask_is_the_ground_truth():
    gt = _disk(60, 70, 30, 30, 18) | _disk(60, 70, 30, 55, 7)  # a blob with a thin neck to a knob
    pred = _disk(60, 70, 36, 24, 15)  # shifted: misses the top right, spills at the bottom left
    pred[2:6, 60:66] = True  # a separate false positive
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :70]
    dabs = 0
    while (pred != gt).any() and dabs < 400:
        wrong, dabs = pred != gt, dabs + 1
        (x, y), radius, erase = sample_brush_stroke(pred, gt, rng)
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        assert radius >= 0.5 and wrong[int(y), int(x)]
        pred = pred & ~disc if erase else pred | disc
        assert not ((pred != gt) & ~wrong).any()  # no pixel that was right became wrong
        assert (pred != gt).sum() < wrong.sum()
    assert np.array_equal(pred, gt) and dabs < 200  # converges, with large dabs first
    with pytest.raises(ValueError, match="nothing to paint"):
        sample_brush_stroke(gt, gt, rng)
