"""AMG utilities against `segment_anything.utils.amg` (the oracle) and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils import amg as official

from sam_hf.inference import amg_utils


@pytest.fixture
def blob_masks() -> torch.Tensor:
    """(6, 37, 53) bool: random blobs, an empty mask, a full mask, one starting with a foreground pixel."""
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((6, 37, 53)) > 0.6)
    masks = F.max_pool2d(masks[:, None].float(), 3, 1, 1)[:, 0] > 0
    masks[1] = False
    masks[2] = True
    masks[3, 0, 0] = True
    return masks


def test_point_grids_and_crop_boxes_match_official():
    np.testing.assert_allclose(amg_utils.build_point_grid(7), official.build_point_grid(7), atol=0)
    for ours, ref in zip(
        amg_utils.build_all_layer_point_grids(16, 2, 2),
        official.build_all_layer_point_grids(16, 2, 2),
        strict=True,
    ):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=0)
    for size, layers, ratio in [((512, 512), 1, 512 / 1500), ((480, 640), 2, 0.3), ((4000, 6000), 1, 0.1)]:
        assert amg_utils.generate_crop_boxes(size, layers, ratio) == official.generate_crop_boxes(
            size, layers, ratio
        )


def test_boxes_and_edges_match_official(blob_masks):
    boxes = amg_utils.batched_mask_to_box(blob_masks)
    assert boxes.shape == (6, 4) and boxes.dtype == torch.int64
    torch.testing.assert_close(boxes, official.batched_mask_to_box(blob_masks))
    assert boxes[1].tolist() == [0, 0, 0, 0]
    assert amg_utils.batched_mask_to_box(blob_masks[:0]).shape == (0, 4)
    crop = [10, 5, 40, 30]
    torch.testing.assert_close(
        amg_utils.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 40]),
        official.is_box_near_crop_edge(boxes, crop, [0, 0, 60, 40]),
    )
    torch.testing.assert_close(
        amg_utils.uncrop_boxes_xyxy(boxes, crop), official.uncrop_boxes_xyxy(boxes, crop)
    )
    points = torch.rand(5, 2, dtype=torch.float64)
    torch.testing.assert_close(amg_utils.uncrop_points(points, crop), official.uncrop_points(points, crop))
    assert amg_utils.box_xyxy_to_xywh(torch.tensor([3, 4, 10, 20])).tolist() == [3, 4, 7, 16]


def test_stability_score_matches_official():
    logits = torch.randn(4, 3, 40, 50) * 3
    ours = amg_utils.calculate_stability_score(logits, 0.0, 1.0)
    assert ours.shape == (4, 3)
    torch.testing.assert_close(ours, official.calculate_stability_score(logits, 0.0, 1.0))


@pytest.mark.parametrize(
    "low_res, padded, valid, out", [(256, 1024, 1024, 512), (32, 128, 96, 72), (256, 1024, 683, 1500)]
)
def test_upsampling_matrix_equals_sam_postprocessing(low_res, padded, valid, out):
    logits = torch.randn(3, low_res, low_res)
    up = F.interpolate(logits[None], (padded, padded), mode="bilinear", align_corners=False)
    up = up[..., :valid, :valid]
    reference = F.interpolate(up, (out, out), mode="bilinear", align_corners=False)[0]
    matrix = amg_utils.upsampling_matrix(low_res, padded, valid, out)
    assert matrix.shape == (out, low_res)
    torch.testing.assert_close(matrix @ logits @ matrix.T, reference, atol=1e-5, rtol=0)


def test_connected_components_match_skimage():
    from skimage.measure import label

    rng = np.random.default_rng(1)
    for shape, density in [((50, 70), 0.45), ((1, 30), 0.5), ((40, 1), 0.5), ((64, 64), 0.6)]:
        mask = rng.random(shape) < density
        labels, sizes = amg_utils.label_connected_components(mask)
        reference = label(mask, connectivity=2)
        assert labels.shape == shape and labels.max() == reference.max() == len(sizes)
        # Same partition: a one-to-one map between the two labelings.
        pairs = np.unique(np.stack([labels[mask], reference[mask]]), axis=1)
        assert pairs.shape[1] == len(sizes)
        np.testing.assert_array_equal(np.sort(sizes), np.sort(np.bincount(reference.ravel())[1:]))
        assert (labels == 0).sum() == (~mask).sum()
    empty_labels, empty_sizes = amg_utils.label_connected_components(np.zeros((5, 6), bool))
    assert empty_labels.shape == (5, 6) and empty_sizes.shape == (0,)


def _reference_remove_small_regions(mask, area, mode):
    """The official algorithm with scikit-image labels in place of OpenCV."""
    from skimage.measure import label

    holes = mode == "holes"
    regions = label(holes ^ mask, connectivity=2)
    sizes = np.bincount(regions.ravel())[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area]
    if not small:
        return mask, False
    fill = [0, *small]
    if not holes:
        fill = [i for i in range(len(sizes) + 1) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 5, 40, 10_000])
def test_remove_small_regions_matches_official_algorithm(mode, area):
    rng = np.random.default_rng(area)
    mask = rng.random((60, 80)) < 0.5
    ours, changed = amg_utils.remove_small_regions(mask, area, mode)
    reference, reference_changed = _reference_remove_small_regions(mask, area, mode)
    assert changed == reference_changed
    np.testing.assert_array_equal(ours, reference)


def test_remove_small_regions_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'holes' or 'islands'"):
        amg_utils.remove_small_regions(np.zeros((3, 3), bool), 1, "blobs")
