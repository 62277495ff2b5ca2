"""Images in any common form -> `(H, W, 3)` uint8 RGB, with one rule used by every part of the package.

The rule (`to_rgb`):
    * a path (`str` or `os.PathLike`): opened with PIL and turned upright by its EXIF orientation
      (`PIL.ImageOps.exif_transpose`), the orientation `datasets.Image` gives when it decodes the file;
      then as a PIL image.
    * `PIL.Image`: 16-bit ("I;16*"), 32-bit integer ("I") and float ("F") images follow the array rules
      (for "I", as 16-bit intensities); every other mode is converted to RGB (palette and grayscale
      expanded, alpha dropped).
    * `np.ndarray` `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)`: grayscale is replicated to three
      channels, a fourth (alpha) channel is dropped. By dtype: uint8 as is; uint16 scaled by 255 / 65535
      (40000 -> 155.6 -> 156); float16/32/64 must lie in [0, 1] and are scaled by 255 (0.8 -> 204); bool
      gives 0 / 255. Scaled values are rounded to the nearest integer. Other integer dtypes (the int64 that
      `datasets` gives for images stored as nested lists) are taken as 8-bit when every value lies in
      0-255, and refused otherwise: their bit depth is ambiguous (cast 0-65535 data to uint16).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_FORMS", "load_image", "to_rgb"]

IMAGE_FORMS = "an image path, a PIL image or a numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | os.PathLike, name: str = "image") -> Image.Image:
    """Open an image file, fully read and upright by its EXIF orientation (as `datasets.Image` decodes it).

    Args:
        path: the image file.
        name: what to call the image in error messages.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if PIL cannot read the file as an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"{name} must be an existing image file", path)
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"{name} must be a readable image file, got {path!r} ({type(error).__name__}: {error})"
        ) from error
    return upright


def to_rgb(image: Any, name: str = "image") -> np.ndarray:
    """Any accepted image (rule in the module docstring) -> `(H, W, 3)` uint8 RGB, C-contiguous.

    Args:
        image: an image path, a PIL image or a numpy array.
        name: what to call the image in error messages (e.g. `"images[3]"` or the file name).

    Raises:
        TypeError: for another type or an unsupported dtype.
        ValueError: for a bad shape, an empty image, float values outside [0, 1] or an unreadable file.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image, name)
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be {IMAGE_FORMS}, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        hint = " (channels-first? use HWC)" if image.ndim == 3 and image.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"{name} must be {IMAGE_FORMS}, got shape {image.shape}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {image.shape}")
    image = _to_uint8(image[..., :3], name)  # an alpha channel is dropped
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> array: high-bit-depth modes keep their values, every other mode becomes RGB."""
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if array.dtype.kind == "i":  # mode "I" holds 16-bit data (PIL's form for some 16-bit files)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(
                    f"a PIL image of mode 'I' must hold 16-bit values in [0, 65535], got "
                    f"[{array.min()}, {array.max()}]"
                )
            array = array.astype(np.uint16)
        return array
    if image.mode == "F":
        return np.asarray(image)
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL converts palette transparency through RGBA only
    return np.asarray(image.convert("RGB"))


def _to_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """`(H, W, C)` of any accepted dtype -> uint8 by the module's rule."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if image.dtype.kind in "iu" and image.dtype != np.uint16 and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    if image.dtype.kind == "u" and image.dtype.itemsize == 2:
        scaled = image.astype(np.float32) * np.float32(255.0 / 65535.0)
    elif image.dtype.kind == "f":
        scaled = image.astype(np.float32)
        if not np.isfinite(scaled).all() or scaled.min() < 0 or scaled.max() > 1:
            raise ValueError(
                f"{name} is a float image and must hold finite values in [0, 1], got range "
                f"[{np.nanmin(scaled):g}, {np.nanmax(scaled):g}] (convert 0-255 floats to uint8 or divide by 255)"
            )
        scaled *= np.float32(255.0)
    else:
        raise TypeError(
            f"{name} must have dtype uint8, uint16, float (in [0, 1]) or bool, or integers in 0-255, got "
            f"{image.dtype} in [{image.min()}, {image.max()}] (cast 0-65535 data to uint16)"
        )
    return np.rint(scaled).astype(np.uint8)
