"""Where images come from: one rule that tells the kind of a source, and one view of its images by name.

`source_kind` (used by every command that takes images or a dataset):
    * `"coco"`: a `.json` file, read as COCO instances (`sam_hf.data.coco.read_coco`, which finds the image
      folder of COCO's standard layout);
    * `"dataset"`: a folder written by `datasets`' `save_to_disk` (it holds `dataset_dict.json`,
      `dataset_info.json` or `state.json`), e.g. `sam-hf annotate` or `sam-hf label` output;
    * `"images"`: any other folder: its image files (`IMAGE_EXTENSIONS`, recursive);
    * `"hub"`: a name shaped like a Hub dataset id (`name` or `owner/name`) that is no local path.

`open_images` turns any of these, or an in-memory `datasets.Dataset`/`DatasetDict`, into an `ImageSource`:
the images by name (file path relative to the folder, or the dataset's `file_name`) and the masks they
already carry (a COCO file's annotations, a mask dataset's `masks`), as annotation records.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .coco import Categories, read_coco
from .images import to_rgb
from .mask_dataset import annotation_from_row, dataset_features

__all__ = ["IMAGE_EXTENSIONS", "SOURCE_KINDS", "ImageSource", "list_images", "open_images", "source_kind"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SOURCE_KINDS = ("coco", "dataset", "images", "hub")
_SAVED_DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")


def source_kind(source: str | os.PathLike) -> str:
    """The kind of `source`, one of `SOURCE_KINDS` (rule in the module docstring)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_dir():
        return "dataset" if any((path / name).is_file() for name in _SAVED_DATASET_FILES) else "images"
    text = str(source)
    if (
        path.exists()
        or path.is_absolute()
        or text.startswith(".")
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
    ):
        reason = "not a folder or a .json file" if path.exists() else "no such file or folder"
        raise ValueError(
            "a source must be an image folder, a dataset folder, a COCO .json file or a Hub dataset id, "
            f"got {text!r} ({reason})"
        )
    return "hub"


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` (recursive), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


class ImageSource:
    """Images by name, with the masks they already carry.

    Args:
        names: one unique name per image.
        stored_image: index -> the image as a dataset stores it (`{"bytes", "path"}` of a file, or a dataset's
            image value).
        origin: what the images were opened from, for messages.
        annotations: per image, its annotation records (`sam_hf.data.mask_dataset`'s form), or None when the
            source carries no masks.
        categories: the categories of those annotations.
        path: index -> the image file, for sources of files (None for datasets).

    Raises:
        ValueError: two images share a name.
    """

    def __init__(
        self,
        names: list[str],
        stored_image: Callable[[int], Any],
        origin: str,
        annotations: list[list[dict[str, Any]]] | None = None,
        categories: Categories | None = None,
        path: Callable[[int], Path] | None = None,
    ):
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ValueError(
                f"images must have unique names (file_name), got {duplicate!r} twice in {origin}"
            )
        self.names = list(names)
        self.origin = origin
        self.annotations = annotations
        self.categories = categories if categories is not None else Categories()
        self._stored_image = stored_image
        self._path = path

    def __len__(self) -> int:
        return len(self.names)

    def stored_image(self, index: int) -> Any:
        """The image as a dataset stores it: the file's bytes and name, or the source dataset's value."""
        return self._stored_image(index)

    def load(self, index: int) -> np.ndarray:
        """`(H, W, 3)` uint8 RGB image `index`, upright (`sam_hf.data.images.to_rgb`).

        Raises:
            FileNotFoundError, ValueError: the image cannot be read.
        """
        if self._path is not None:
            return to_rgb(self._path(index), self.names[index])
        return to_rgb(self._stored_image(index), self.names[index])

    def select(self, names: list[str]) -> ImageSource:
        """The images named `names`, in that order.

        Raises:
            ValueError: a name is not an image of this source (the message names the first missing).
        """
        position = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in position]
        if missing:
            raise ValueError(
                f"images must include every image named before, got {len(missing)} missing from {self.origin} "
                f"(first {missing[0]!r})"
            )
        order = [position[n] for n in names]
        return ImageSource(
            list(names),
            lambda i: self._stored_image(order[i]),
            self.origin,
            None if self.annotations is None else [self.annotations[i] for i in order],
            self.categories,
            None if self._path is None else (lambda i: self._path(order[i])),
        )

    def check_readable(self) -> None:
        """Make sure at least one image opens, cheaply (file headers only; a dataset is taken as readable).

        Raises:
            ValueError: no file opens as an image (the message names the first few).
        """
        if self._path is None:
            return
        problems = []
        for index in range(len(self)):
            try:
                with Image.open(self._path(index)) as image:
                    image.size  # noqa: B018 (reading the header is the check)
                return
            except Exception as error:  # any reason a file is not an image
                problems.append(f"{self.names[index]}: {type(error).__name__}")
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ValueError(
            f"images must hold a readable image, got {len(problems)} unreadable in {self.origin} ({shown})"
        )


def open_images(
    images: Any,
    image_column: str = "image",
    split: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> ImageSource:
    """The images of any source (`source_kind`'s forms, a `datasets.Dataset` or `DatasetDict`, or an
    `ImageSource`).

    Args:
        images: the source.
        image_column: the image column of a dataset.
        split: the split of a dataset with splits; None takes all splits, in order.
        image_root: the image folder of a COCO file (default: found as `read_coco` says).

    Raises:
        ValueError: the source holds no image, a column or split is missing, or names repeat.
        FileNotFoundError: an image of a COCO file is missing.
    """
    if isinstance(images, ImageSource):
        return images
    source = _open(images, image_column, split, image_root)
    if not source.names:
        raise ValueError(f"images must hold at least one image, got none in {source.origin}")
    return source


def _open(
    images: Any, image_column: str, split: str | None, image_root: str | os.PathLike | None
) -> ImageSource:
    import datasets

    origin = repr(str(images)) if isinstance(images, (str, os.PathLike)) else type(images).__name__
    if isinstance(images, (str, os.PathLike)):
        kind = source_kind(images)
        if kind == "coco":
            return _coco_source(images, image_root)
        if kind == "images":
            return _folder_source(Path(images))
        images = (
            datasets.load_from_disk(str(images)) if kind == "dataset" else datasets.load_dataset(str(images))
        )
    if isinstance(images, datasets.DatasetDict):
        if split is not None and split not in images:
            raise ValueError(f"split must be one of {sorted(images)} for {origin}, got {split!r}")
        parts = [images[split]] if split is not None else list(images.values())
        images = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if not isinstance(images, datasets.Dataset):
        raise ValueError(
            f"images must be an image folder, a dataset folder, a COCO .json file, a Hub dataset id or a "
            f"datasets.Dataset, got {type(images).__name__}"
        )
    return _dataset_source(images, image_column, origin)


def _folder_source(folder: Path) -> ImageSource:
    names = list_images(folder)

    def stored(i: int) -> dict[str, Any]:
        return {"bytes": (folder / names[i]).read_bytes(), "path": names[i]}

    return ImageSource(names, stored, repr(str(folder)), path=lambda i: folder / names[i])


def _coco_source(path: str | os.PathLike, image_root: str | os.PathLike | None) -> ImageSource:
    coco = read_coco(path, image_root)
    names = [image["file_name"] for image in coco.images]

    def stored(i: int) -> dict[str, Any]:
        return {"bytes": coco.image_path(i).read_bytes(), "path": names[i]}

    return ImageSource(names, stored, repr(str(path)), coco.annotations, coco.categories, coco.image_path)


def _dataset_source(dataset: Any, image_column: str, origin: str) -> ImageSource:
    if image_column not in dataset.column_names:
        raise ValueError(
            f"image_column {image_column!r} is not a column of {origin}, got columns {dataset.column_names}"
        )
    names = (
        [str(n) for n in dataset["file_name"]]
        if "file_name" in dataset.column_names
        else [f"{i:08d}" for i in range(len(dataset))]
    )
    annotations, categories = None, Categories()
    if (
        "masks" in dataset.column_names
        and dataset.features["masks"].feature == dataset_features()["masks"].feature
    ):
        rows = dataset.remove_columns([c for c in dataset.column_names if c == image_column])
        annotations = []
        for row in rows:
            annotations.append([annotation_from_row(row, k) for k in range(len(row["masks"]))])
            for annotation in annotations[-1]:
                if "category" in annotation:
                    categories.add({"id": annotation["category_id"], "name": annotation["category"]})
                else:
                    categories.id_for(None)

    def stored(i: int) -> Any:
        return dataset[i][image_column]

    return ImageSource(names, stored, origin, annotations, categories)
