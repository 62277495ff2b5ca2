"""`sam_hf.visualization.draw_masks`: pixel by pixel, tints follow the blend formula, outlines and prompts have
their colours, and everything else is left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from sam_hf.visualization import PALETTE, MaskLayer, draw_masks, palette_layers

GREEN, RED, GOLD = (0, 200, 0), (220, 0, 0), (255, 215, 0)  # positive point, negative point, box


@pytest.fixture
def image() -> np.ndarray:
    """(48, 64, 3) uint8 noise."""
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _square(top: int, left: int, side: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_tint_is_the_blend_formula_and_the_rest_is_unchanged(image):
    mask = _square(10, 20, 12)
    colour = (10, 200, 30)
    before = image.copy()
    drawn = np.asarray(draw_masks(image, [MaskLayer(mask, colour, alpha=0.25)]))
    # alpha 0.25 makes every blended value exact in binary, so rounding cannot depend on the float type.
    expected = np.round(0.75 * image[mask].astype(np.float64) + 0.25 * np.array(colour)).astype(np.uint8)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.array_equal(drawn[mask], expected)
    assert np.array_equal(drawn[~mask], image[~mask])
    assert np.array_equal(image, before)  # the input is not drawn on


def test_outline_is_drawn_over_tints_inside_the_mask(image):
    everywhere = np.ones(image.shape[:2], bool)
    square, inner = _square(10, 20, 12), _square(14, 24, 4)
    tint, line, inner_line = (0, 0, 255), (255, 255, 255), (255, 225, 25)
    layers = [
        MaskLayer(everywhere, tint, alpha=1.0),
        MaskLayer(square, line, alpha=0.0, outline=True),
        MaskLayer(inner, inner_line, alpha=0.0, outline=True),
    ]
    drawn = np.asarray(draw_masks(image, layers))
    assert drawn[10, 25].tolist() == list(line)  # top row of the square
    assert drawn[21, 31].tolist() == list(line)  # bottom-right corner
    assert drawn[12, 25].tolist() == list(tint)  # inside: the layer below shows through an alpha-0 layer
    assert drawn[9, 25].tolist() == list(tint)  # just outside: the outline lies inside the mask
    assert drawn[14, 25].tolist() == list(inner_line)  # the inner layer's border, over the square
    assert drawn[13, 25].tolist() == list(tint)  # the square is not outlined around a layer lying on it


def test_points_by_label_and_box(image):
    coords = np.array([[20.0, 7.0], [7.0, 20.0]])  # (X, Y) pixels
    drawn = np.asarray(draw_masks(image, [], coords, np.array([1, 0]), box=(30, 30, 50, 45)))
    assert drawn[7, 20].tolist() == list(GREEN)  # positive: row Y, column X
    assert drawn[20, 7].tolist() == list(RED)
    assert drawn[30, 40].tolist() == list(GOLD)  # top side of the XYXY box
    assert np.array_equal(drawn[0:3, 40:64], image[0:3, 40:64])  # away from every prompt


def test_one_pass_gives_the_same_pixel_with_one_layer_or_twenty(image):
    """Pixels covered by the last layer only look as if it were alone; where layers overlap, the last one's
    tint replaces those beneath instead of adding to them."""
    last = MaskLayer(_square(30, 40, 10), (255, 0, 255), alpha=0.55, outline=True)
    others = [
        _square(i, i, 20) for i in range(19)
    ]  # together rows and columns 0-37; the last starts at column 40
    outlined = MaskLayer(others[-1], (9, 9, 9), alpha=0.0, outline=True)
    alone = np.asarray(draw_masks(image, [last]))
    crowded = np.asarray(draw_masks(image, [*palette_layers(others), outlined, last]))
    assert np.array_equal(crowded[30:40, 40:50], alone[30:40, 40:50])
    top_tint = np.array(PALETTE[18 % len(PALETTE)])  # (19, 19) lies in every one of `others`
    assert crowded[19, 19].tolist() == np.round(0.5 * image[19, 19] + 0.5 * top_tint).astype(int).tolist()
    assert crowded[18, 30].tolist() == [9, 9, 9]  # the outline of the last of `others`


def test_palette_layers_cycle_the_palette():
    masks = [np.zeros((2, 2), bool)] * (len(PALETTE) + 1)
    colours = [layer.colour for layer in palette_layers(masks, alpha=0.3)]
    assert colours == [*PALETTE, PALETTE[0]]


def test_bad_arguments_name_what_was_expected(image):
    with pytest.raises(ValueError, match=r"layers\[0\].mask must have the image's shape"):
        draw_masks(image, [MaskLayer(np.zeros((4, 4), bool), (0, 0, 0))])
    with pytest.raises(ValueError, match="mask must be an \\(H, W\\) bool array"):
        MaskLayer(np.zeros((48, 64), np.uint8), (0, 0, 0))
    with pytest.raises(ValueError, match=r"point_labels must have shape \(1,\)"):
        draw_masks(image, [], np.array([[1.0, 2.0]]), np.array([2]))
    with pytest.raises(ValueError, match="given together"):
        draw_masks(image, [], np.array([[1.0, 2.0]]))
