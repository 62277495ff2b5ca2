"""Label maps (`sam_hf.data.label_maps`): integer, palette and colour-coded maps, lossy maps, and the
dataset reader reading them through it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sam_hf.data.label_maps import LossyLabelMapError, LossyLabelMapWarning, label_map_to_masks
from sam_hf.data.reader import to_instances

# Three objects whose colours share channels: read from the red channel alone, two merge and one vanishes.
_COLOURS = ((128, 0, 0), (128, 128, 0), (0, 128, 0))


def _objects(height: int = 48, width: int = 64) -> list[np.ndarray]:
    masks = [np.zeros((height, width), bool) for _ in range(3)]
    masks[0][4:20, 4:24] = True
    masks[1][24:44, 6:30] = True
    masks[2][10:40, 36:60] = True
    return masks


def _colour_map() -> np.ndarray:
    image = np.zeros((48, 64, 3), np.uint8)
    for mask, colour in zip(_objects(), _COLOURS, strict=True):
        image[mask] = colour
    return image


def _jpeg(array: np.ndarray, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer)


def _sorted(masks) -> list:
    return sorted(m.tobytes() for m in np.asarray(masks))


def test_colour_map_gives_one_instance_per_colour():
    masks = label_map_to_masks(Image.fromarray(_colour_map()))
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    assert _sorted(masks) == _sorted(_objects())
    rgba = np.concatenate([_colour_map(), np.full((48, 64, 1), 255, np.uint8)], -1)
    assert _sorted(label_map_to_masks(rgba)) == _sorted(_objects())
    _, from_reader = to_instances(
        {"image": np.zeros((48, 64, 3), np.uint8), "label": Image.fromarray(_colour_map())}
    )
    assert _sorted(from_reader) == _sorted(_objects())
    _, from_array = to_instances({"image": np.zeros((48, 64, 3), np.uint8), "label": _colour_map()})
    assert _sorted(from_array) == _sorted(_objects())


def test_palette_map_ignores_the_voc_border():
    indices = np.zeros((48, 64), np.uint8)
    for index, mask in enumerate(_objects()[:2], start=1):
        indices[mask] = index
    indices[3, 3:25] = 255  # VOC's "void" border
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 3 * 252 + [224, 224, 192])
    masks = label_map_to_masks(image)
    assert masks.shape == (2, 48, 64)
    np.testing.assert_array_equal(masks, np.stack(_objects()[:2]))
    rendered = label_map_to_masks(image.convert("RGB"))  # the same map as VOC renders it in colour
    assert _sorted(rendered) == _sorted(_objects()[:2])


@pytest.mark.parametrize("mode", ["L", "I;16", "I"])
def test_integer_maps(mode):
    ids = np.zeros((48, 64), np.int32)
    for value, mask in zip((1, 7, 200), _objects(), strict=True):
        ids[mask] = value
    if mode == "I;16":
        ids[_objects()[2]] = 3000
    image = Image.fromarray(ids.astype({"L": np.uint8, "I;16": np.uint16, "I": np.int32}[mode]))
    assert image.mode == mode
    np.testing.assert_array_equal(label_map_to_masks(image), np.stack(_objects()))


def test_grey_map_saved_as_rgb_is_an_integer_map():
    ids = np.zeros((48, 64), np.uint8)
    for value, mask in enumerate(_objects(), start=1):
        ids[mask] = value
    np.testing.assert_array_equal(label_map_to_masks(np.repeat(ids[..., None], 3, -1)), np.stack(_objects()))


def test_jpeg_binary_mask_is_cleaned_with_a_warning():
    mask = _objects()[2]
    lossy = _jpeg(mask.astype(np.uint8) * 255)
    assert len(np.unique(np.asarray(lossy))) > 10  # what the old reader turned into as many "instances"
    with pytest.warns(
        LossyLabelMapWarning, match="lossy .*binary mask.*thresholded at 127.5 to one instance"
    ):
        masks = label_map_to_masks(lossy)
    assert masks.shape == (1, 48, 64)
    assert (masks[0] & mask).sum() / (masks[0] | mask).sum() > 0.97
    with pytest.warns(LossyLabelMapWarning):
        _, from_reader = to_instances({"image": np.zeros((48, 64, 3), np.uint8), "label": lossy})
    assert len(from_reader) == 1


def test_jpeg_colour_map_is_refused():
    lossy = _jpeg(_colour_map(), quality=90)
    with pytest.raises(LossyLabelMapError, match="lossy .*JPEG.*distinct values.*save label maps as PNG"):
        label_map_to_masks(lossy)
    with pytest.raises(ValueError, match="lossy"):
        to_instances({"image": np.zeros((48, 64, 3), np.uint8), "label": lossy})


def test_many_small_objects_are_not_taken_for_noise():
    from sam_hf.data.synthetic import generate_sample

    sample = generate_sample(0, "train", "cells")
    ids = np.zeros(sample.masks.shape[1:], np.uint8)
    for value, mask in enumerate(sample.masks, start=1):
        ids[mask] = value
    assert len(label_map_to_masks(ids)) == len(np.unique(ids)) - 1


def test_rejects_a_shape_that_is_no_label_map():
    with pytest.raises(
        ValueError, match="must be an \\(H, W\\) integer label map .* got shape \\(2, 3, 5\\)"
    ):
        label_map_to_masks(np.zeros((2, 3, 5)), "label")
