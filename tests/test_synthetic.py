"""Procedural data: determinism, held-out splits, mask validity and variety, datasets wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from sam_hf.data.synthetic import DOMAINS, generate_sample, synthetic_dataset, synthetic_samples


@pytest.mark.parametrize("domain", DOMAINS)
def test_sample_shapes_and_masks(domain):
    sample = generate_sample(3, "train", domain, image_size=96)
    assert sample.image.shape == (96, 96, 3)
    assert sample.image.dtype == np.uint8
    assert sample.masks.dtype == bool
    assert sample.masks.shape[1:] == (96, 96)
    assert len(sample.masks) >= 1
    assert sample.masks.reshape(len(sample.masks), -1).any(axis=1).all()
    # Visible instance masks of an occlusion order never overlap.
    assert sample.masks.sum(axis=0).max() == 1


def test_same_index_same_sample_and_splits_differ():
    first, again = generate_sample(5), generate_sample(5)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.masks, again.masks)
    held_out = generate_sample(5, "test")
    assert not np.array_equal(first.image, held_out.image)
    assert not np.array_equal(generate_sample(5, domain="cells").image, first.image)


def test_variety_of_sizes_and_counts():
    samples = list(synthetic_samples(30, "validation", image_size=128))
    areas = np.concatenate([s.masks.reshape(len(s.masks), -1).sum(1) for s in samples])
    counts = [len(s.masks) for s in samples]
    assert areas.min() <= 30  # a few pixels
    assert areas.max() >= 0.2 * 128 * 128  # a large part of the image
    assert max(counts) >= 8 and min(counts) <= 4
    gray = [np.array_equal(s.image[..., 0], s.image[..., 1]) for s in samples]
    assert any(gray) and not all(gray)


def test_objects_with_holes_occur():
    from scipy.ndimage import binary_fill_holes  # scipy comes with scikit-image (test-only)

    holes = 0
    for sample in synthetic_samples(20, "validation", image_size=128):
        for mask in sample.masks:
            holes += int((binary_fill_holes(mask) & ~mask).sum() > 4)
    assert holes >= 1


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, "val")
    with pytest.raises(ValueError, match="domain"):
        generate_sample(0, domain="faces")
    with pytest.raises(ValueError, match="image_size"):
        generate_sample(0, image_size=8)


def test_datasets_wrapper(tmp_path):
    dataset = synthetic_dataset(3, "test", image_size=64)
    assert dataset.split == "test"
    assert len(dataset) == 3
    row = dataset[0]
    sample = generate_sample(0, "test", image_size=64)
    np.testing.assert_array_equal(np.asarray(row["image"]), sample.image)
    np.testing.assert_array_equal(np.asarray(row["masks"], dtype=bool), sample.masks)
