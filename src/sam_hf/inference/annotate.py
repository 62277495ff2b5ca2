"""The data engine: automatic masks over many images -> a `datasets` dataset and COCO JSON.

Layout of the output folder `out`:

- `out/` itself is a `DatasetDict.save_to_disk` folder (`datasets.load_from_disk(out)`) with a `train` and,
  unless `test_fraction` is 0, a `test` split (see `assign_splits`), one row per readable image:
  `image`, `image_id`, `file_name`, `width`, `height` and per-mask lists `masks` (COCO RLE
  `{"size": [H, W], "counts": str}`), `bbox` (XYWH), `area`, `predicted_iou`, `stability_score`,
  `point_coords` (XY prompt), `crop_box` (XYWH);
- `out/data/train.parquet`, `out/data/test.parquet`: the same splits for
  `datasets.load_dataset("parquet", data_dir=out/"data")`;
- `out/annotations.json`: COCO instances of all splits (one category, `"object"`), plus `predicted_iou` and
  `stability_score` per annotation and the `split` of each image;
- `out/work/`: `manifest.json` (the image list and settings) and one record per image, written atomically
  (temp file + rename) as each image finishes. A rerun skips images that have a record, so an interrupted
  run resumes without doing any image twice or losing one. Unreadable images get a record with the
  reason (logged, and listed in `out/work/skipped.json`) and no row.

With `accelerate launch`, process i handles images i, i + n, i + 2n, ...; the main process merges the
records once all processes are done. The split is made at the merge, from the file names alone, so the
records do not depend on it and a rerun with another `test_fraction` only merges again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import to_rgb
from .automatic_mask_generator import SamAutomaticMaskGenerator

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "annotate",
    "assign_splits",
    "coco_instances",
    "dataset_features",
    "list_images",
    "write_atomic",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_RLE_MODE = "coco_rle"


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` (recursive), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def assign_splits(names: list[str], test_fraction: float) -> list[str]:
    """`"train"` or `"test"` for each image name, deterministically from a hash of the name.

    An image is in `test` when the SHA-256 of its name, read as a number in [0, 1), is below
    `test_fraction`, so an image keeps its split when others are added to the folder. With two or more
    images and `test_fraction > 0`, each split gets at least one: the image with the lowest hash moves to
    `test`, or the one with the highest to `train`.

    Args:
        names: image names (file paths relative to the input folder, or a dataset's `file_name`s).
        test_fraction: expected share of `test`, in [0, 1).

    Returns:
        One split name per entry of `names`, in order.
    """
    _check_test_fraction(test_fraction)
    position = [int.from_bytes(hashlib.sha256(n.encode("utf-8")).digest()[:8], "big") / 2**64 for n in names]
    splits = ["test" if p < test_fraction else "train" for p in position]
    if len(names) >= 2 and test_fraction > 0.0:
        if "test" not in splits:
            splits[min(range(len(names)), key=position.__getitem__)] = "test"
        if "train" not in splits:
            splits[max(range(len(names)), key=position.__getitem__)] = "train"
    return splits


def _check_test_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")


def dataset_features() -> Any:
    """The `datasets.Features` of the output rows."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "image_id": Value("int64"),
            "file_name": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
            "masks": List({"size": List(Value("int32")), "counts": Value("string")}),
            "bbox": List(List(Value("float32"))),
            "area": List(Value("int64")),
            "predicted_iou": List(Value("float32")),
            "stability_score": List(Value("float32")),
            "point_coords": List(List(Value("float32"))),
            "crop_box": List(List(Value("int32"))),
        }
    )


def annotate(
    images: str | os.PathLike | Any,
    model: Any,
    out: str | os.PathLike,
    *,
    generator_kwargs: dict[str, Any] | None = None,
    min_predicted_iou: float = 0.0,
    min_stability_score: float = 0.0,
    min_area: int = 0,
    image_column: str = "image",
    test_fraction: float = 0.2,
    push_to_hub: str | None = None,
    private: bool = False,
    show_progress: bool = True,
) -> Any:
    """Generate masks for every image and write the dataset (see the module docstring for the layout).

    Args:
        images: a folder of images, or a `datasets.Dataset` with an image column.
        model: the `SamHFModel` (moved to this process's accelerator device).
        out: output folder; an existing one with the same images and settings is resumed.
        generator_kwargs: arguments of `SamAutomaticMaskGenerator` (its `output_mode` is always COCO RLE).
        min_predicted_iou, min_stability_score, min_area: quality filters applied to the generated masks,
            e.g. to keep only confident pseudo-labels.
        image_column: the image column when `images` is a dataset.
        test_fraction: share of the images held out in the `test` split (see `assign_splits`); 0 writes
            only `train`.
        push_to_hub: a Hub dataset repo id to push the merged dataset to.
        private: create the Hub repo as private.
        show_progress: show a progress bar per process.

    Returns:
        The merged `datasets.DatasetDict` on the main process, `None` on the others.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    _check_test_fraction(test_fraction)  # before any image is annotated
    # Without this flag PartialState ignores a torchrun/accelerate multi-process launch on CPU-only machines.
    state = PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))
    source = ImageSource(images, image_column)
    out = Path(out)
    work = out / "work"
    records_dir = work / "records"
    settings = {
        "generator": {**(generator_kwargs or {}), "output_mode": _RLE_MODE},
        "min_predicted_iou": min_predicted_iou,
        "min_stability_score": min_stability_score,
        "min_area": min_area,
    }
    if state.is_main_process:
        records_dir.mkdir(parents=True, exist_ok=True)
        _check_or_write_manifest(work / "manifest.json", source.names, settings)
    state.wait_for_everyone()

    generator = SamAutomaticMaskGenerator(model.to(state.device).eval(), **settings["generator"])
    todo = [
        i
        for i in range(state.process_index, len(source), state.num_processes)
        if not (records_dir / f"{i:08d}.json").exists()
    ]
    progress = tqdm(
        todo,
        desc=f"annotate [{state.process_index}/{state.num_processes}]",
        disable=not show_progress,
        position=state.process_index,
    )
    for index in progress:
        record = {"image_id": index, "file_name": source.names[index]}
        try:
            image = source.load(index)
        except Exception as error:  # any unreadable image is skipped with its reason
            record["error"] = f"{type(error).__name__}: {error}"
            logger.warning("skipping %s: %s", source.names[index], record["error"])
        else:
            record["height"], record["width"] = image.shape[:2]
            record["annotations"] = [
                _compact(r)
                for r in generator.generate(image)
                if r["predicted_iou"] >= min_predicted_iou
                and r["stability_score"] >= min_stability_score
                and r["area"] >= min_area
            ]
        write_atomic(records_dir / f"{index:08d}.json", json.dumps(record))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    dataset = _merge(source, records_dir, out, test_fraction)
    if push_to_hub:
        dataset.push_to_hub(push_to_hub, private=private)
    return dataset


class ImageSource:
    """Uniform access to a folder of image files or a `datasets.Dataset` image column."""

    def __init__(self, images: Any, image_column: str):
        if isinstance(images, (str, os.PathLike)):
            self.folder = Path(images)
            if not self.folder.is_dir():
                raise ValueError(
                    f"images must be a folder of images or a datasets.Dataset, got {str(images)!r}"
                )
            self.names = list_images(self.folder)
            self.dataset = None
        else:
            if image_column not in getattr(images, "column_names", ()):
                raise ValueError(
                    f"image_column {image_column!r} is not a column of the dataset, "
                    f"got columns {getattr(images, 'column_names', None)}"
                )
            self.folder = None
            self.dataset = images
            self.image_column = image_column
            file_names = images["file_name"] if "file_name" in images.column_names else None
            self.names = [str(file_names[i]) if file_names else f"{i:08d}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> np.ndarray:
        """`(H, W, 3)` uint8 RGB image, upright as `datasets` decodes the stored image."""
        if self.dataset is None:
            return to_rgb(self.folder / self.names[index], self.names[index])
        return to_rgb(self.dataset[index][self.image_column], self.names[index])

    def stored_image(self, index: int) -> Any:
        """The image as written to the dataset: the original file bytes, or the source dataset's value."""
        if self.dataset is None:
            path = self.folder / self.names[index]
            return {"bytes": path.read_bytes(), "path": self.names[index]}
        return self.dataset[index][self.image_column]


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "segmentation": record["segmentation"],
        "bbox": record["bbox"],
        "area": record["area"],
        "predicted_iou": record["predicted_iou"],
        "stability_score": record["stability_score"],
        "point_coords": record["point_coords"][0],
        "crop_box": record["crop_box"],
    }


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


def _check_or_write_manifest(path: Path, names: list[str], settings: dict[str, Any]) -> None:
    manifest = {"images": names, "settings": settings}
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(manifest)):
            raise ValueError(
                f"out {str(path.parent.parent)!r} holds a run with other images or settings; "
                "use a new output folder to start over"
            )
        return
    write_atomic(path, json.dumps(manifest))


def _records(records_dir: Path, count: int) -> Iterator[dict[str, Any]]:
    for index in range(count):
        path = records_dir / f"{index:08d}.json"
        if not path.exists():
            raise RuntimeError(f"image {index} has no record in {records_dir}; rerun to finish it")
        yield json.loads(path.read_text())


def _rows(source: ImageSource, records_dir: str) -> Iterator[dict[str, Any]]:
    for record in _records(Path(records_dir), len(source)):
        if "error" in record:
            continue
        annotations = record["annotations"]
        yield {
            "image": source.stored_image(record["image_id"]),
            "image_id": record["image_id"],
            "file_name": record["file_name"],
            "width": record["width"],
            "height": record["height"],
            "masks": [a["segmentation"] for a in annotations],
            "bbox": [a["bbox"] for a in annotations],
            "area": [a["area"] for a in annotations],
            "predicted_iou": [a["predicted_iou"] for a in annotations],
            "stability_score": [a["stability_score"] for a in annotations],
            "point_coords": [a["point_coords"] for a in annotations],
            "crop_box": [a["crop_box"] for a in annotations],
        }


def _merge(source: ImageSource, records_dir: Path, out: Path, test_fraction: float) -> Any:
    """Records -> the split dataset on disk (arrow + parquet), COCO JSON and the skipped list."""
    from datasets import Dataset, DatasetDict, load_from_disk

    records = list(_records(records_dir, len(source)))
    skipped = [{"file_name": r["file_name"], "error": r["error"]} for r in records if "error" in r]
    readable = [r for r in records if "error" not in r]
    splits = assign_splits([r["file_name"] for r in readable], test_fraction)
    write_atomic(records_dir.parent / "skipped.json", json.dumps(skipped, indent=2))
    write_atomic(out / "annotations.json", json.dumps(coco_instances(readable, splits)))
    with tempfile.TemporaryDirectory(dir=records_dir.parent) as cache:
        # A fresh cache folder: from_generator must not reuse rows cached from an earlier, partial merge.
        rows = Dataset.from_generator(
            _rows,
            features=dataset_features(),
            gen_kwargs={"source": source, "records_dir": str(records_dir)},
            cache_dir=cache,
        )
        dataset = DatasetDict(
            {
                name: rows.select([i for i, split in enumerate(splits) if split == name])
                for name in ("train", "test")
                if name == "train" or name in splits
            }
        )
        dataset.save_to_disk(str(out))
        parquet = out / "data"
        parquet.mkdir(exist_ok=True)
        for stale in parquet.glob("*.parquet"):  # a split an earlier merge wrote and this one does not
            stale.unlink()
        for name, split in dataset.items():
            split.to_parquet(str(parquet / f"{name}.parquet"))
    return load_from_disk(str(out))


def coco_instances(records: list[dict[str, Any]], splits: list[str]) -> dict[str, Any]:
    """COCO instances JSON of the readable images' records, each image with its split."""
    images, annotations = [], []
    for record, split in zip(records, splits, strict=True):
        images.append(
            {
                "id": record["image_id"],
                "file_name": record["file_name"],
                "width": record["width"],
                "height": record["height"],
                "split": split,
            }
        )
        for a in record["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": 1,
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "bbox": a["bbox"],
                    "iscrowd": 0,
                    "predicted_iou": a["predicted_iou"],
                    "stability_score": a["stability_score"],
                    "point_coords": [a["point_coords"]],
                    "crop_box": a["crop_box"],
                }
            )
    return {
        "info": {"description": "sam-hf automatic masks"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
