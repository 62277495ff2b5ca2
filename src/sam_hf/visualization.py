"""Masks and prompts drawn over an image: the one overlay of `sam-hf segment`, `generate`, `demo` and the
labelling page.

Conventions: an image is `(H, W, 3)` uint8 RGB (or any form `sam_hf.data.images.to_rgb` takes), a mask is
`(H, W)` bool, points are `(N, 2)` (X, Y) in pixels with labels `(N,)` (1 positive, 0 negative), a box is
`(4,)` XYXY in pixels, and a colour is (R, G, B) in 0-255.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .data.images import to_rgb

__all__ = ["PALETTE", "MaskLayer", "draw_masks", "marker_radius", "palette_layers"]

# Distinct colours for masks drawn each in its own colour, used in turn (cycled).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
)
_POINT_COLOURS = {1: (0, 200, 0), 0: (220, 0, 0)}  # positive green, negative red
_POINT_RIM = (255, 255, 255)
_BOX_COLOUR = (255, 215, 0)


@dataclass(frozen=True, eq=False)  # eq=False: masks are arrays, compared by identity
class MaskLayer:
    """One mask to draw with `draw_masks`.

    Attributes:
        mask: `(H, W)` bool, the image's size.
        colour: (R, G, B) in 0-255 of the tint and of the outline.
        alpha: opacity of the tint in [0, 1]: a covered pixel becomes `(1 - alpha) * pixel + alpha * colour`,
            rounded to the nearest integer; 0 draws no tint (an outline alone).
        outline: draw the mask's border pixels (inside the mask, 4-connected) in `colour`, opaque.
    """

    mask: np.ndarray
    colour: tuple[int, int, int]
    alpha: float = 0.5
    outline: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.bool_ or self.mask.ndim != 2:
            got = getattr(self.mask, "dtype", type(self.mask).__name__)
            raise ValueError(f"mask must be an (H, W) bool array, got {got} of shape {np.shape(self.mask)}")
        if len(self.colour) != 3 or not all(0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour must be (R, G, B) in 0-255, got {self.colour}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")


def palette_layers(masks: Iterable[np.ndarray], alpha: float = 0.5) -> Iterable[MaskLayer]:
    """Tinted layers of `(H, W)` bool masks, each in the next colour of `PALETTE`; lazy, one mask at a time."""
    return (MaskLayer(mask, PALETTE[i % len(PALETTE)], alpha) for i, mask in enumerate(masks))


def marker_radius(size: tuple[int, int]) -> int:
    """Radius in pixels of a point marker on an image of `size` `(W, H)`: visible at any size (at least 3)."""
    return max(3, round(max(size) / 150))


def draw_masks(
    image: Any,
    layers: Iterable[MaskLayer],
    point_coords: Any = None,
    point_labels: Any = None,
    box: Any = None,
) -> Image.Image:
    """The image with `layers` tinted and outlined, then the points and the box drawn on top.

    Later layers lie over earlier ones: a pixel takes the tint of the last layer covering it with a nonzero
    alpha (tints replace each other, they do not add up). Outlines are drawn over every tint: an outlined
    layer's visible part (where no later outlined layer covers it) gets its colour on the pixels that touch,
    4-connected, a pixel of no outlined layer or of an earlier one, so a layer hides the outlines beneath it
    and a layer lying inside another is outlined in its own colour only. Tints and outlines are each painted as indices into one palette
    and blended in one pass, and `layers` is read once, one mask at a time: a redraw costs about the same with
    one layer or many.

    Args:
        image: `(H, W, 3)` uint8 RGB, or any image `sam_hf.data.images.to_rgb` takes; not changed.
        layers: the masks, bottom first.
        point_coords: `(N, 2)` (X, Y) pixels of clicks, or None; each drawn as a disc of `marker_radius`
            with a white rim.
        point_labels: `(N,)` 1 (positive, drawn green) or 0 (negative, drawn red); given with `point_coords`.
        box: `(4,)` XYXY pixels, or None; drawn as a gold rectangle.

    Returns:
        A new RGB image of size `(W, H)`.

    Raises:
        ValueError: for a layer whose mask is not `(H, W)`, points without labels (or the reverse), labels
            other than 0 and 1, or a box that is not 4 numbers.
    """
    rgb = to_rgb(image)
    shape = rgb.shape[:2]
    tints, outlines = _Palette(shape), _Palette(shape)
    for index, layer in enumerate(layers):
        if layer.mask.shape != shape:
            raise ValueError(
                f"layers[{index}].mask must have the image's shape {shape}, got {layer.mask.shape}"
            )
        if layer.alpha > 0:
            tints.paint(layer)
        if layer.outline:
            outlines.paint(layer)
    canvas = tints.blend(rgb)
    outlines.outline(canvas)
    picture = Image.fromarray(canvas)
    _draw_prompts(ImageDraw.Draw(picture), marker_radius(picture.size), point_coords, point_labels, box)
    return picture


class _Palette:
    """Per pixel, the index of the last layer painted over it (0: none), with the layers' colours and alphas."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.index = np.zeros(shape, np.int32)
        self._colours, self._alphas = [(0, 0, 0)], [0.0]

    def paint(self, layer: MaskLayer) -> None:
        self.index[layer.mask] = len(self._colours)
        self._colours.append(layer.colour)
        self._alphas.append(layer.alpha)

    def blend(self, rgb: np.ndarray) -> np.ndarray:
        """`(H, W, 3)` uint8: `rgb` with every pixel tinted by its layer, in one pass."""
        if len(self._colours) == 1:
            return rgb.copy()
        alpha = np.asarray(self._alphas, np.float32)[self.index][..., None]
        tint = np.asarray(self._colours, np.float32)[self.index]
        return (rgb * (1 - alpha) + tint * alpha).round().astype(np.uint8)

    def outline(self, canvas: np.ndarray) -> None:
        """Paint each layer's border against what lies beneath it on `canvas` (`(H, W, 3)` uint8), in place, in
        the layer's colour."""
        if len(self._colours) == 1:
            return
        edges = _edges(self.index)
        canvas[edges] = np.asarray(self._colours, np.uint8)[self.index[edges]]


def _edges(regions: np.ndarray) -> np.ndarray:
    """`(H, W)` bool: pixels of `regions` (`(H, W)` layer indices, 0 for none) beside a pixel of a lower index,
    4-connected: the border of each layer's visible part against what lies beneath it."""
    edges = np.zeros(regions.shape, bool)
    edges[:, 1:] |= regions[:, 1:] > regions[:, :-1]
    edges[:, :-1] |= regions[:, :-1] > regions[:, 1:]
    edges[1:] |= regions[1:] > regions[:-1]
    edges[:-1] |= regions[:-1] > regions[1:]
    return edges


def _draw_prompts(
    draw: ImageDraw.ImageDraw, radius: int, point_coords: Any, point_labels: Any, box: Any
) -> None:
    """The box, then the points over it, as `draw_masks` documents them."""
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together, got only one of them")
    if box is not None:
        xyxy = np.asarray(box, np.float64)
        if xyxy.shape != (4,):
            raise ValueError(f"box must be 4 numbers XYXY in pixels, got shape {xyxy.shape}")
        draw.rectangle(xyxy.tolist(), outline=_BOX_COLOUR, width=max(2, radius // 2))
    if point_coords is None:
        return
    coords = np.asarray(point_coords, np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords must be (N, 2) X, Y pixels, got shape {coords.shape}")
    labels = np.asarray(point_labels)
    if labels.shape != (len(coords),) or not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"point_labels must have shape ({len(coords)},) with values 1 (positive) or 0 (negative), got "
            f"{labels.tolist()}"
        )
    for (x, y), label in zip(coords.tolist(), labels.tolist(), strict=True):
        box_of_disc = (x - radius, y - radius, x + radius, y + radius)
        draw.ellipse(box_of_disc, fill=_POINT_COLOURS[int(label)], outline=_POINT_RIM)
