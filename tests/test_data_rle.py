"""The RLE codec (`sam_hf.data.rle`) against the official generator's RLE functions and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from segment_anything.utils import amg as official

from sam_hf.data import rle


@pytest.fixture
def blob_masks() -> torch.Tensor:
    """(6, 37, 53) bool: random blobs, an empty mask, a full mask, one starting with a foreground pixel."""
    masks = torch.from_numpy(np.random.default_rng(0).random((6, 37, 53)) > 0.6)
    masks = F.max_pool2d(masks[:, None].float(), 3, 1, 1)[:, 0] > 0
    masks[1] = False
    masks[2] = True
    masks[3, 0, 0] = True
    return masks


def test_encoder_matches_official_and_pycocotools(blob_masks):
    ours = rle.mask_to_rle_pytorch(blob_masks)
    assert ours == official.mask_to_rle_pytorch(blob_masks)
    assert ours[3]["counts"][0] == 0  # starts with a foreground pixel: a leading empty background run
    assert [c.tolist() for c in rle.rle_counts(blob_masks)] == [r["counts"] for r in ours]
    assert rle.mask_to_rle_pytorch(blob_masks[:0]) == []
    fortran = np.asfortranarray(blob_masks.numpy().transpose(1, 2, 0).astype(np.uint8))
    for uncompressed, reference in zip(ours, mask_utils.encode(fortran), strict=True):
        compressed = rle.coco_encode_rle(uncompressed)
        assert compressed == official.coco_encode_rle(uncompressed)
        assert compressed["counts"] == reference["counts"].decode()  # same string as pycocotools' encoder


def test_encoder_reads_transposed_storage(blob_masks):
    """The AMG computes masks as (N, W, H) memory viewed as (N, H, W); the counts must not change."""
    transposed_storage = blob_masks.transpose(1, 2).contiguous().transpose(1, 2)
    assert [c.tolist() for c in rle.rle_counts(transposed_storage)] == [
        c.tolist() for c in rle.rle_counts(blob_masks)
    ]


def test_torch_and_numpy_change_finders_agree(blob_masks):
    """CPU tensors take the numpy path; the torch one (other devices) must find the same runs."""
    flat = blob_masks.transpose(1, 2).reshape(6, -1)
    for ours, reference in zip(rle._changes_numpy(flat), rle._changes_torch(flat), strict=True):
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("form", ["uncompressed", "compressed_str", "compressed_bytes"])
def test_one_decoder_reads_both_forms(blob_masks, form):
    for mask, uncompressed in zip(blob_masks.numpy(), rle.mask_to_rle_pytorch(blob_masks), strict=True):
        encoded = uncompressed
        if form != "uncompressed":
            encoded = rle.coco_encode_rle(uncompressed)
            if form == "compressed_bytes":
                encoded = {**encoded, "counts": encoded["counts"].encode()}
        decoded = rle.rle_to_mask(encoded)
        assert decoded.shape == (37, 53) and decoded.dtype == bool
        np.testing.assert_array_equal(decoded, mask)
        assert rle.area_from_rle(encoded) == mask.sum()


def test_decoder_reads_pycocotools_output():
    mask = np.asfortranarray((np.random.default_rng(0).random((37, 41)) < 0.4).astype(np.uint8))
    np.testing.assert_array_equal(rle.rle_to_mask(mask_utils.encode(mask)), mask.astype(bool))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"size": [4, 5], "counts": [3, 4]}, "summing to H\\*W = 20, got 2 counts summing to 7"),
        ({"counts": [20]}, "rle must be a dict"),
        ([0, 20], "rle must be a dict"),
    ],
)
def test_decoder_rejects_malformed_rle(value, match):
    with pytest.raises(ValueError, match=match):
        rle.rle_to_mask(value)
