"""Label-map images -> instance masks, one rule for every kind of map.

`label_map_to_masks` reads:
    * integer maps (PIL modes "L", "1", "I", "I;16*", or a 2-D array): one instance per non-zero id,
      0 is background (a semantic map gives one instance per class);
    * palette maps (PIL mode "P", as VOC's `SegmentationObject` PNGs): one instance per palette index,
      0 is background and 255 (VOC's object border, "void") is ignored;
    * colour-coded maps (PIL "RGB"/"RGBA" or an `(H, W, 3|4)` array whose channels differ): one instance
      per distinct colour, black is background and VOC's void colour (224, 224, 192) is ignored; an alpha
      channel is dropped. A map whose three channels are equal is a grey integer map.

Lossy maps. A map saved as JPEG gets many values that no labeller wrote: ringing bands along every edge,
each a "label" without a single interior pixel (one whose four neighbours share its value). A map with
at least as many such speckle labels as solid ones, and at least two, is lossy:
    * an 8-bit grey map (typically a 0/255 mask saved as JPEG) is thresholded at the midpoint of its value
      range to one binary instance, with a `LossyLabelMapWarning` saying so;
    * a colour map raises `LossyLabelMapError`: the colours cannot be recovered reliably.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["LossyLabelMapError", "LossyLabelMapWarning", "VOC_VOID_COLOUR", "label_map_to_masks"]

VOC_VOID_COLOUR = (224, 224, 192)  # the colour of palette index 255 in VOC's palette
_VOC_VOID_INDEX = 255


class LossyLabelMapError(ValueError):
    """A label map whose values were changed by lossy compression and cannot be cleaned."""


class LossyLabelMapWarning(UserWarning):
    """A lossy label map was cleaned; the message says how."""


def label_map_to_masks(value: Any, name: str = "label map") -> np.ndarray:
    """A label map (rule in the module docstring) -> `(N, H, W)` bool instance masks.

    Args:
        value: a PIL image, or an array-like `(H, W)` integer/bool map or `(H, W, 3|4)` colour map.
        name: what to call the map in warnings and errors.

    Returns:
        `(N, H, W)` bool, one mask per id (in increasing id order) or colour (in increasing RGB order);
        `N = 0` for a map that is all background.

    Raises:
        ValueError: for a shape that is no label map.
        LossyLabelMapError: for a lossy colour map.
    """
    if isinstance(value, Image.Image):
        if value.mode in ("P", "PA"):
            return _integer_instances(np.asarray(value.getchannel(0)), name, ignore=(0, _VOC_VOID_INDEX))
        if value.mode not in ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
            value = value.convert("RGB")
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if not (rgb == rgb[..., :1]).all():
            return _colour_instances(rgb, name)
        array = rgb[..., 0]
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be an (H, W) integer label map or an (H, W, 3) colour map, got shape {array.shape}"
        )
    return _integer_instances(array, name, ignore=(0,))


def _integer_instances(ids: np.ndarray, name: str, ignore: tuple[int, ...]) -> np.ndarray:
    if ids.dtype == np.uint8:
        lossy = _speckle_report(ids)
        if lossy is not None:
            low, high = int(ids.min()), int(ids.max())
            threshold = (low + high) / 2
            warnings.warn(
                f"{name} looks like a lossy (e.g. JPEG) copy of a binary mask: {lossy}; thresholded at "
                f"{threshold:g} to one instance (save label maps as PNG to keep their ids)",
                LossyLabelMapWarning,
                stacklevel=3,
            )
            return (ids > threshold)[None]
    values = [v for v in np.unique(ids) if v not in ignore]
    return _stack([ids == v for v in values], ids.shape)


def _colour_instances(rgb: np.ndarray, name: str) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lossy = _speckle_report(codes)
    if lossy is not None:
        raise LossyLabelMapError(
            f"{name} must be a colour-coded label map with one exact colour per object, got a lossy (e.g. "
            f"JPEG) image: {lossy}; save label maps as PNG"
        )
    void = (VOC_VOID_COLOUR[0] << 16) | (VOC_VOID_COLOUR[1] << 8) | VOC_VOID_COLOUR[2]
    values = [v for v in np.unique(codes) if v not in (0, void)]
    return _stack([codes == v for v in values], codes.shape)


def _speckle_report(ids: np.ndarray) -> str | None:
    """A description of the speckle when `ids` is lossy (at least as many speckle labels as solid ones,
    and at least two), else None. A solid label has at least one pixel whose four neighbours share its value."""
    if min(ids.shape) < 3:
        return None
    values = np.unique(ids)
    centre = ids[1:-1, 1:-1]
    interior = (
        (centre == ids[:-2, 1:-1])
        & (centre == ids[2:, 1:-1])
        & (centre == ids[1:-1, :-2])
        & (centre == ids[1:-1, 2:])
    )
    num_solid = len(np.unique(centre[interior]))
    num_speckle = len(values) - num_solid
    if num_speckle < max(2, num_solid):
        return None
    return f"{len(values)} distinct values, {num_speckle} of them only in thin bands or specks"


def _stack(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)
