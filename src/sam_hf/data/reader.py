"""Segmentation datasets as `(image, instance masks)` pairs for fine-tuning SAM.

Sources (`load_segmentation_dataset`): a Hub dataset id, a local `Dataset.save_to_disk` folder, an
`imagefolder` directory, or a COCO-format annotation JSON file.

Mask formats (`mask_format`), converted by `to_instances` with this rule:
- `"label_map"`: an `(H, W)` integer map (PIL image or array); every non-zero id is one instance, 0 is
  background. A semantic map therefore gives one instance per class.
- `"binary"`: per-instance binary masks, `(N, H, W)` array or a list of `(H, W)` masks.
- `"rle"`: a list of COCO RLE dicts `{"size": [H, W], "counts": list[int] | str}`.
- `"coco"`: a list of COCO `segmentation` fields (polygon lists or RLE dicts), as produced for COCO files.
- `"auto"`: chosen from the value of the first usable row.
Empty instances are dropped; a row with no instance left, or whose masks differ in size from the image,
is unusable. Unusable rows are counted in `DatasetStats`, logged, and left out of the returned dataset.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..inference.amg_utils import decompress_rle_counts

__all__ = ["DatasetStats", "MASK_FORMATS", "decode_rle", "load_segmentation_dataset", "to_instances"]

logger = logging.getLogger(__name__)

MASK_FORMATS = ("auto", "label_map", "binary", "rle", "coco")


@dataclass
class DatasetStats:
    """What `load_segmentation_dataset` kept and why it left rows out.

    Attributes:
        num_rows: rows in the source split.
        num_usable: rows with at least one instance matching the image size.
        num_instances: instances in the usable rows.
        unusable: count per reason (`"empty_mask"`, `"size_mismatch"`).
        unusable_indices: source indices of the unusable rows.
        mask_format: the format to pass to `to_instances` for the returned rows.
    """

    num_rows: int = 0
    num_usable: int = 0
    num_instances: int = 0
    unusable: Counter = field(default_factory=Counter)
    unusable_indices: list[int] = field(default_factory=list)
    mask_format: str = "auto"


class _UnusableRow(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE dict (column-major counts, uncompressed list or compressed string) to `(H, W)` bool."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = decompress_rle_counts(counts)
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in counts:
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    if position != height * width:
        raise ValueError(f"rle counts must sum to H*W = {height * width}, got {position}")
    return flat.reshape(width, height).T


def _polygons_to_mask(polygons: list, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2], strict=True)]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation)
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], list) and segmentation.get("size") is None:
            segmentation = {**segmentation, "size": [height, width]}
        return decode_rle(segmentation)
    return _polygons_to_mask(segmentation, height, width)


def _detect_format(value: Any) -> str:
    if isinstance(value, Image.Image):
        return "label_map"
    if isinstance(value, np.ndarray):
        return "label_map" if value.ndim == 2 else "binary"
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, dict):
            return "rle"
        if isinstance(first, str):
            return "coco"
        array = np.asarray(value, dtype=object)
        return (
            "binary"
            if array.ndim == 3 or (array.ndim >= 1 and isinstance(first, Image.Image))
            else "label_map"
        )
    raise ValueError(f"mask_format='auto' cannot recognise a mask value of type {type(value).__name__}")


def to_rgb_image(image: Any) -> np.ndarray:
    """A dataset image (PIL image or `(H, W[, C])` array) as `(H, W, 3)` uint8 RGB: gray repeated, alpha dropped."""
    image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def to_instances(
    example: dict,
    image_column: str = "image",
    mask_column: str = "label",
    mask_format: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Convert one dataset row to an RGB image and its instance masks (rule in the module docstring).

    Args:
        example: a row with an image (PIL image or `(H, W[, C])` array) and a mask value.
        image_column: column holding the image.
        mask_column: column holding the masks.
        mask_format: one of `MASK_FORMATS`.

    Returns:
        `image (H, W, 3)` uint8 and `masks (N, H, W)` bool with N >= 1, instances ordered by label id or
        by position.

    Raises:
        ValueError: if the row has no non-empty instance or its masks do not match the image size.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    for column in (image_column, mask_column):
        if column not in example:
            raise ValueError(f"column {column!r} not in the example; columns are {sorted(example)}")
    image = to_rgb_image(example[image_column])
    height, width = image.shape[:2]

    value = example[mask_column]
    fmt = _detect_format(value) if mask_format == "auto" else mask_format
    if fmt == "label_map":
        label_map = np.asarray(value)
        if label_map.ndim == 3:  # an RGB-saved label image: ids live in the first channel
            label_map = label_map[..., 0]
        instances = [label_map == i for i in np.unique(label_map) if i != 0]
    elif fmt == "binary":
        instances = [np.asarray(m).astype(bool) for m in value]
    elif fmt == "rle":
        instances = [decode_rle(r) for r in value]
    else:
        instances = [_segmentation_to_mask(s, height, width) for s in value]
    for mask in instances:
        if mask.shape != (height, width):
            raise _UnusableRow("size_mismatch", f"a mask is {mask.shape} but the image is {(height, width)}")
    instances = [mask for mask in instances if mask.any()]
    if not instances:
        raise _UnusableRow("empty_mask", "the row has no non-empty instance mask")
    masks = np.stack(instances)
    return image, masks


def _load_coco(path: str, image_column: str, mask_column: str):
    import datasets

    with open(path) as f:
        coco = json.load(f)
    root = os.path.dirname(os.path.abspath(path))
    by_image: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco.get("annotations", []):
        if not annotation.get("iscrowd", 0) or isinstance(annotation["segmentation"], dict):
            by_image.setdefault(annotation["image_id"], []).append(json.dumps(annotation["segmentation"]))
    rows = {
        image_column: [os.path.join(root, image["file_name"]) for image in coco["images"]],
        mask_column: [by_image[image["id"]] for image in coco["images"]],
    }
    return datasets.Dataset.from_dict(rows).cast_column(image_column, datasets.Image())


def _load_source(source: str, split: str | None, image_column: str, mask_column: str):
    import datasets

    if os.path.isfile(source) and source.endswith(".json"):
        return _load_coco(source, image_column, mask_column), "coco"
    if os.path.isdir(source):
        if os.path.exists(os.path.join(source, "dataset_info.json")) or os.path.exists(
            os.path.join(source, "dataset_dict.json")
        ):
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=source)
    else:
        loaded = datasets.load_dataset(source)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in loaded else next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"split must be one of {list(loaded)}, got {split!r}")
        loaded = loaded[split]
    return loaded, None


def load_segmentation_dataset(
    source: str,
    split: str | None = None,
    image_column: str = "image",
    mask_column: str = "label",
    mask_format: str = "auto",
):
    """Load a segmentation dataset and keep the rows usable for training.

    Args:
        source: Hub dataset id, `save_to_disk` folder, `imagefolder` directory or COCO JSON file.
        split: split of a `DatasetDict` (default `"train"` if present, else the first).
        image_column: column with the images.
        mask_column: column with the masks (for COCO files, the column created to hold the segmentations).
        mask_format: one of `MASK_FORMATS`; fixed to `"coco"` for COCO files.

    Returns:
        `(dataset, stats)`: a `datasets.Dataset` with the usable rows (other columns kept) and their
        `DatasetStats`. Convert its rows with `to_instances(row, image_column, mask_column, stats.mask_format)`.
    """
    dataset, forced_format = _load_source(source, split, image_column, mask_column)
    mask_format = forced_format or mask_format
    stats = DatasetStats(num_rows=len(dataset), mask_format=mask_format)
    keep = []
    for index, example in enumerate(dataset):
        try:
            _, masks = to_instances(example, image_column, mask_column, mask_format)
        except _UnusableRow as error:
            stats.unusable[error.reason] += 1
            stats.unusable_indices.append(index)
            continue
        keep.append(index)
        stats.num_instances += len(masks)
    stats.num_usable = len(keep)
    logger.warning(
        "%s: %d of %d rows usable (%d instances); unusable: %s",
        source,
        stats.num_usable,
        stats.num_rows,
        stats.num_instances,
        dict(stats.unusable) or "none",
    )
    if len(keep) != len(dataset):
        dataset = dataset.select(keep)
    return dataset, stats
