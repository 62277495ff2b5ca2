"""Segmentation datasets as `(image, instance masks)` pairs for fine-tuning SAM.

Sources (`load_segmentation_dataset`), told apart by `sam_hf.data.sources.source_kind`: a Hub dataset id, a
local `Dataset.save_to_disk` folder, an `imagefolder` directory, or a COCO instances JSON file (its images
found by `sam_hf.data.coco.read_coco`, in COCO's standard layout or under `image_root`).

The mask column (`mask_column`): the one named; when that is the default `"label"` and the dataset has
no such column, the first of `MASK_COLUMNS` it has (so the `masks` column `sam-hf annotate` writes is
found without flags).

Mask formats (`mask_format`), converted by `to_instances` with this rule:
- `"label_map"`: a label image or array, read by `sam_hf.data.label_maps.label_map_to_masks` (integer,
  palette and colour-coded maps; one instance per id or colour; lossy maps cleaned or refused).
- `"binary"`: per-instance binary masks, `(N, H, W)` array or a list of `(H, W)` masks.
- `"rle"`: a list of COCO RLE dicts `{"size": [H, W], "counts": list[int] | str}` (`sam_hf.data.rle`).
- `"coco"`: a list of COCO `segmentation` fields (polygon lists or RLE dicts), decoded as pycocotools'
  `annToMask` (`sam_hf.data.coco.segmentation_to_mask`).
- `"auto"`: chosen from each row's value.
Images are read by `sam_hf.data.images.to_rgb`. Crowd regions (a row's `iscrowd` list beside its masks, as
COCO files and the package's mask datasets carry) are not instances (`sam_hf.data.coco`). Empty instances are
dropped; a row with no instance left,
whose masks differ in size from the image, or with a lossy colour map, is unusable. Unusable rows are
counted in `DatasetStats`, logged, and left out of the returned dataset; a split with no usable row is
an error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .coco import read_coco, segmentation_to_mask
from .images import to_rgb
from .label_maps import LossyLabelMapError, label_map_to_masks
from .rle import rle_to_mask
from .sources import source_kind

__all__ = [
    "DEFAULT_MASK_COLUMN",
    "DatasetStats",
    "MASK_COLUMNS",
    "MASK_FORMATS",
    "load_segmentation_dataset",
    "resolve_mask_column",
    "to_instances",
]

logger = logging.getLogger(__name__)

MASK_FORMATS = ("auto", "label_map", "binary", "rle", "coco")
DEFAULT_MASK_COLUMN = "label"
# Where datasets keep masks: the default, `sam-hf annotate`'s output and common Hub layouts, in that order.
MASK_COLUMNS = (DEFAULT_MASK_COLUMN, "masks", "mask", "segmentation", "annotation", "instances")


@dataclass
class DatasetStats:
    """What `load_segmentation_dataset` kept and why it left rows out.

    Attributes:
        num_rows: rows in the source split.
        num_usable: rows with at least one instance matching the image size.
        num_instances: instances in the usable rows.
        unusable: count per reason (`"empty_mask"`, `"size_mismatch"`, `"lossy_label_map"`).
        unusable_indices: source indices of the unusable rows.
        mask_format: the format to pass to `to_instances` for the returned rows.
        mask_column: the column the masks were read from.
        split: the split read, None for a dataset without splits.
    """

    num_rows: int = 0
    num_usable: int = 0
    num_instances: int = 0
    unusable: Counter = field(default_factory=Counter)
    unusable_indices: list[int] = field(default_factory=list)
    mask_format: str = "auto"
    mask_column: str = DEFAULT_MASK_COLUMN
    split: str | None = None


class _UnusableRow(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _detect_format(value: Any) -> str:
    if isinstance(value, Image.Image):
        return "label_map"
    if isinstance(value, np.ndarray):
        # (H, W, 3|4) uint8 is a colour label map; a stack of 3 or 4 pixel wide instances is not plausible
        colour = value.ndim == 3 and value.shape[-1] in (3, 4) and value.dtype == np.uint8
        return "label_map" if value.ndim == 2 or colour else "binary"
    if isinstance(value, (list, tuple)):
        if not value:
            return "binary"  # no instance: the row is unusable whatever the format
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


def resolve_mask_column(columns: Any, mask_column: str = DEFAULT_MASK_COLUMN) -> str:
    """The mask column of a dataset with `columns` (rule in the module docstring).

    Raises:
        ValueError: if the column is not there (naming the columns there are).
    """
    columns = list(columns)
    if mask_column in columns:
        return mask_column
    if mask_column == DEFAULT_MASK_COLUMN:
        for candidate in MASK_COLUMNS:
            if candidate in columns:
                return candidate
        raise ValueError(
            f"mask_column: the dataset has none of the usual mask columns {list(MASK_COLUMNS)}; "
            f"got columns {sorted(columns)} (name the mask column)"
        )
    raise ValueError(
        f"mask_column {mask_column!r} is not a column of the dataset; columns are {sorted(columns)}"
    )


def to_instances(
    example: dict,
    image_column: str = "image",
    mask_column: str = DEFAULT_MASK_COLUMN,
    mask_format: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Convert one dataset row to an RGB image and its instance masks (rule in the module docstring).

    Args:
        example: a row with an image (any form `to_rgb` reads) and a mask value.
        image_column: column holding the image.
        mask_column: column holding the masks (found as in `resolve_mask_column`).
        mask_format: one of `MASK_FORMATS`.

    Returns:
        `image (H, W, 3)` uint8 and `masks (N, H, W)` bool with N >= 1, instances ordered by label id or
        by position.

    Raises:
        ValueError: if the row has no non-empty instance, its masks do not match the image size, or its
            colour label map is lossy.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if image_column not in example:
        raise ValueError(f"image_column {image_column!r} not in the example; columns are {sorted(example)}")
    mask_column = resolve_mask_column(example, mask_column)
    image = to_rgb(example[image_column], image_column)
    height, width = image.shape[:2]

    value = example[mask_column]
    fmt = _detect_format(value) if mask_format == "auto" else mask_format
    if fmt == "label_map":
        try:
            instances = list(label_map_to_masks(value, mask_column))
        except LossyLabelMapError as error:
            raise _UnusableRow("lossy_label_map", str(error)) from error
    elif fmt == "binary":
        instances = [np.asarray(m).astype(bool) for m in value]
    elif fmt == "rle":
        instances = [rle_to_mask(r) for r in value]
    else:
        instances = [segmentation_to_mask(s, height, width) for s in value]
    for mask in instances:
        if mask.shape != (height, width):
            raise _UnusableRow("size_mismatch", f"a mask is {mask.shape} but the image is {(height, width)}")
    crowd = example.get("iscrowd")
    if isinstance(crowd, (list, tuple)) and len(crowd) == len(instances):
        instances = [mask for mask, flag in zip(instances, crowd, strict=True) if not flag]
    instances = [mask for mask in instances if mask.any()]
    if not instances:
        raise _UnusableRow("empty_mask", "the row has no non-empty instance mask")
    masks = np.stack(instances)
    return image, masks


def _load_coco(path: str, image_root: str | None, image_column: str):
    """A COCO file as rows of the package's mask datasets: the image path, `masks` (RLE), `iscrowd`, `category_id`."""
    import datasets

    coco = read_coco(path, image_root)
    rows = {
        image_column: [str(coco.image_path(i)) for i in range(len(coco.images))],
        "file_name": [image["file_name"] for image in coco.images],
        "masks": [[a["segmentation"] for a in annotations] for annotations in coco.annotations],
        "iscrowd": [[a["iscrowd"] for a in annotations] for annotations in coco.annotations],
        "category_id": [[a["category_id"] for a in annotations] for annotations in coco.annotations],
    }
    return datasets.Dataset.from_dict(rows).cast_column(image_column, datasets.Image())


def _load_source(source: str, split: str | None, image_column: str, image_root: str | None):
    """-> (dataset, format forced by the source or None, split read or None for a dataset without splits)."""
    import datasets

    kind = source_kind(source)
    if kind == "coco":
        return _load_coco(source, image_root, image_column), "rle", None
    if kind == "dataset":
        loaded = datasets.load_from_disk(source)
    elif kind == "images":
        loaded = datasets.load_dataset("imagefolder", data_dir=source)
    else:
        loaded = datasets.load_dataset(source)
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded, None, None
    if split is None:
        split = "train" if "train" in loaded else next(iter(loaded))
    if split not in loaded:
        raise ValueError(f"split must be one of {sorted(loaded)} for {source}, got {split!r}")
    return loaded[split], None, split


def load_segmentation_dataset(
    source: str,
    split: str | None = None,
    image_column: str = "image",
    mask_column: str = DEFAULT_MASK_COLUMN,
    mask_format: str = "auto",
    image_root: str | None = None,
):
    """Load a segmentation dataset and keep the rows usable for training and evaluation.

    Args:
        source: Hub dataset id, `save_to_disk` folder (e.g. `sam-hf annotate`'s output), `imagefolder`
            directory or COCO JSON file.
        split: split of a `DatasetDict` (default `"train"` if present, else the first); ignored for a
            dataset without splits.
        image_column: column with the images.
        mask_column: column with the masks (found as in `resolve_mask_column`; for COCO files, `masks`).
        mask_format: one of `MASK_FORMATS`; fixed to `"rle"` for COCO files, whose segmentations are read as
            pycocotools reads them.
        image_root: the image folder of a COCO file (default: its layout's, see `sam_hf.data.coco.read_coco`).

    Returns:
        `(dataset, stats)`: a `datasets.Dataset` with the usable rows (other columns kept) and their
        `DatasetStats`. Convert its rows with
        `to_instances(row, image_column, stats.mask_column, stats.mask_format)`.

    Raises:
        ValueError: if a column is missing, or no row is usable (saying why for each reason).
        FileNotFoundError: an image of a COCO file is missing (named in the message).
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    dataset, forced_format, split = _load_source(source, split, image_column, image_root)
    if image_column not in dataset.column_names:
        raise ValueError(
            f"image_column {image_column!r} is not a column of {source}; columns are {sorted(dataset.column_names)}"
        )
    stats = DatasetStats(
        num_rows=len(dataset),
        mask_format=forced_format or mask_format,
        mask_column=resolve_mask_column(dataset.column_names, mask_column),
        split=split,
    )
    keep, first_problem = [], {}
    for index, example in enumerate(dataset):
        try:
            _, masks = to_instances(example, image_column, stats.mask_column, stats.mask_format)
        except _UnusableRow as error:
            stats.unusable[error.reason] += 1
            stats.unusable_indices.append(index)
            first_problem.setdefault(error.reason, f"row {index}: {error}")
            continue
        keep.append(index)
        stats.num_instances += len(masks)
    stats.num_usable = len(keep)
    where = f"{source}" + (f" (split {split!r})" if split else "")
    reasons = "; ".join(
        f"{reason}: {stats.unusable[reason]} (first: {first_problem[reason]})" for reason in stats.unusable
    )
    logger.warning(
        "%s: %d of %d rows usable (%d instances, masks from column %r); unusable: %s",
        where,
        stats.num_usable,
        stats.num_rows,
        stats.num_instances,
        stats.mask_column,
        reasons or "none",
    )
    if not keep:
        raise ValueError(
            f"dataset {where} must have at least one usable row (an image with a non-empty mask of its "
            f"size in column {stats.mask_column!r}), got 0 of {stats.num_rows}: {reasons or 'the split is empty'}"
        )
    if len(keep) != len(dataset):
        dataset = dataset.select(keep)
    return dataset, stats
