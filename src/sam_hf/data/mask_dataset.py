"""The mask datasets the package writes (`sam-hf annotate`, `sam-hf label`): records, schema, splits and the
folder on disk, in one place for every writer and reader.

A **record** holds one image's masks, as JSON: `{"image_id", "file_name", "width", "height", "annotations"}`.
Each annotation has COCO's fields, `segmentation` (compressed RLE), `area` and `bbox` (XYWH pixels, both from
`sam_hf.data.coco.annotation_geometry`: pycocotools' values), `category_id` and `iscrowd`, then the rest of
`MASK_COLUMNS` (`None` where unknown, e.g. `predicted_iou` of an imported mask) and any fields a writer adds.

An output folder `out` holds:
- `out/` itself: a `DatasetDict.save_to_disk` folder (`datasets.load_from_disk(out)`) with the splits that have
  images among `train` and `test` (`assign_splits`), one row per image with `image`, `image_id`,
  `file_name`, `width`, `height` and one list per mask column: `masks` (the RLEs), `MASK_COLUMNS`'s others,
  and the writer's extra columns;
- `out/data/<split>.parquet`: the same splits for `datasets.load_dataset("parquet", data_dir=out/"data")`;
- `out/annotations.json`: COCO instances of all splits, each image with its `split`, every category;
- the writer's records and state, written atomically (`write_atomic`): `out/work/` for `sam-hf annotate`,
  `out/labeling/` for `sam-hf label`.

`write_mask_dataset` rebuilds `out/` from the records and swaps it in whole, so a reader never sees half a
dataset and a session may write the folder it reads its images from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .coco import Categories, coco_json

__all__ = [
    "MASK_COLUMNS",
    "SPLITS",
    "annotation_from_row",
    "assign_splits",
    "check_test_fraction",
    "dataset_features",
    "write_atomic",
    "write_mask_dataset",
]

SPLITS = ("train", "test")
# Per-mask columns of every mask dataset, in order; "masks" holds the annotations' `segmentation`.
MASK_COLUMNS = (
    "masks",
    "bbox",
    "area",
    "category_id",
    "category",
    "iscrowd",
    "predicted_iou",
    "stability_score",
    "point_coords",
    "crop_box",
)


def dataset_features(extra: dict[str, Any] | None = None) -> Any:
    """The `datasets.Features` of a mask dataset's rows, with per-mask `extra` columns (name -> value feature)."""
    from datasets import Features, Image, List, Value

    per_mask = {
        "masks": {"size": List(Value("int32")), "counts": Value("string")},
        "bbox": List(Value("float32")),
        "area": Value("int64"),
        "category_id": Value("int64"),
        "category": Value("string"),
        "iscrowd": Value("int8"),
        "predicted_iou": Value("float32"),
        "stability_score": Value("float32"),
        "point_coords": List(Value("float32")),
        "crop_box": List(Value("int32")),
        **(extra or {}),
    }
    image = {
        "image": Image(),
        "image_id": Value("int64"),
        "file_name": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
    }
    return Features({**image, **{name: List(feature) for name, feature in per_mask.items()}})


def annotation_from_row(row: dict[str, Any], index: int) -> dict[str, Any]:
    """Annotation `index` of a mask dataset row (without its image), as a record's annotation: every per-mask
    column of the row."""
    annotation = {
        ("segmentation" if name == "masks" else name): values[index]
        for name, values in row.items()
        if isinstance(values, list) and len(values) == len(row["masks"])
    }
    annotation.setdefault("category_id", 1)
    annotation.setdefault("iscrowd", 0)
    return annotation


def assign_splits(names: list[str], test_fraction: float) -> list[str]:
    """`"train"` or `"test"` for each image name, deterministically from a hash of the name.

    An image is in `test` when the SHA-256 of its name, read as a number in [0, 1), is below
    `test_fraction`, so an image keeps its split when others are added. With two or more images and
    `test_fraction > 0`, each split gets at least one: the image with the lowest hash moves to `test`, or
    the one with the highest to `train`.

    Args:
        names: image names (file paths relative to the input folder, or a dataset's `file_name`s).
        test_fraction: expected share of `test`, in [0, 1).

    Returns:
        One split name per entry of `names`, in order.
    """
    check_test_fraction(test_fraction)
    position = [int.from_bytes(hashlib.sha256(n.encode("utf-8")).digest()[:8], "big") / 2**64 for n in names]
    splits = ["test" if p < test_fraction else "train" for p in position]
    if len(names) >= 2 and test_fraction > 0.0:
        if "test" not in splits:
            splits[min(range(len(names)), key=position.__getitem__)] = "test"
        if "train" not in splits:
            splits[max(range(len(names)), key=position.__getitem__)] = "train"
    return splits


def check_test_fraction(test_fraction: float) -> None:
    """Raises ValueError unless `test_fraction` is in [0, 1)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see either nothing or the whole content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mask_dataset(
    out: str | os.PathLike,
    records: list[dict[str, Any]],
    stored_image: Callable[[int], Any],
    *,
    test_fraction: float,
    categories: Categories,
    description: str,
    extra_features: dict[str, Any] | None = None,
) -> Any:
    """Write `out/` (dataset, parquet files, COCO JSON; layout in the module docstring) from `records`.

    Args:
        out: the output folder (created if missing).
        records: one per image, in dataset order.
        stored_image: the value of the `image` column for a record's `image_id` (file bytes or a dataset's
            image value).
        test_fraction: share of the images in `test` (`assign_splits` of the `file_name`s).
        categories: the categories of the files, holding every annotation's `category_id`.
        description: the COCO file's `info.description`.
        extra_features: per-mask columns beyond `MASK_COLUMNS` (name -> value feature), read from the
            annotations' fields of the same name and written to the COCO file too.

    Returns:
        The `DatasetDict` reloaded from `out`.

    Raises:
        ValueError: an annotation's `category_id` is not in `categories`.
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {c["id"]: c["name"] for c in categories.to_coco()}
    unknown = {a["category_id"] for r in records for a in r["annotations"]} - set(names)
    if unknown:
        raise ValueError(f"category_id must be one of {sorted(names)}, got {sorted(unknown)}")
    splits = assign_splits([r["file_name"] for r in records], test_fraction)
    images = [
        {key: record[key] for key in ("file_name", "width", "height")}
        | {"id": record["image_id"], "split": split}
        for record, split in zip(records, splits, strict=True)
    ]
    fields = ("segmentation", *MASK_COLUMNS[1:], *(extra_features or {}))
    annotations = [
        {"image_id": r["image_id"], **{f: a.get(f) for f in fields if f != "category"}}
        for r in records
        for a in r["annotations"]
    ]
    write_atomic(
        out / "annotations.json", json.dumps(coco_json(images, annotations, categories, description))
    )

    def rows() -> Iterator[dict[str, Any]]:
        for record in records:
            row = {key: record[key] for key in ("image_id", "file_name", "width", "height")}
            row["image"] = stored_image(record["image_id"])
            for name in (*MASK_COLUMNS, *(extra_features or {})):
                key = "segmentation" if name == "masks" else name
                if name == "category":
                    row[name] = [names[a["category_id"]] for a in record["annotations"]]
                else:
                    row[name] = [a.get(key) for a in record["annotations"]]
            yield row

    with tempfile.TemporaryDirectory(dir=out, prefix=".write-") as scratch:
        # A fresh cache folder: from_generator must not reuse rows cached from earlier records.
        table = Dataset.from_generator(
            rows, features=dataset_features(extra_features), cache_dir=os.path.join(scratch, "cache")
        )
        dataset = DatasetDict(
            {
                name: table.select([i for i, s in enumerate(splits) if s == name])
                for name in SPLITS
                if name in splits
            }
        )
        staged = Path(scratch) / "dataset"
        dataset.save_to_disk(str(staged))
        (staged / "data").mkdir()
        for name, split in dataset.items():
            split.to_parquet(str(staged / "data" / f"{name}.parquet"))
        _swap_in(staged, out, [*SPLITS, "data"], Path(scratch) / "old")
    return load_from_disk(str(out))


def _swap_in(staged: Path, out: Path, folders: list[str], trash: Path) -> None:
    """Move the staged dataset into `out`, folder by folder; old folders go to `trash` (files a process still
    maps stay readable until it lets go)."""
    trash.mkdir()
    for name in folders:
        if (out / name).exists():
            os.replace(out / name, trash / name)
        if (staged / name).exists():
            os.replace(staged / name, out / name)
    os.replace(staged / "dataset_dict.json", out / "dataset_dict.json")
    shutil.rmtree(trash)
