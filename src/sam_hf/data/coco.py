"""COCO instances in and out: segmentations as pycocotools reads them, the annotation record, categories, and
COCO files (written, and read with their image folder).

Every mask geometry follows pycocotools, the convention COCO's tools and their users share:
    * a segmentation (polygon list, uncompressed or compressed RLE) becomes a mask as `COCO.annToMask` makes
      it (`frPyObjects`, then `merge` for polygons): a 50x50 square polygon covers 2500 pixels;
    * `area` is `pycocotools.mask.area` and `bbox` (XYWH, pixels) is `pycocotools.mask.toBbox` of the mask's
      RLE: a one-pixel object at (x, y) has the box `[x, y, 1, 1]`.

Crowd regions (`iscrowd` 1, as RLE or polygons) are kept with their flag wherever annotations are carried and
are never instances: `sam_hf.data.reader.to_instances` leaves them out of fine-tuning targets and evaluation
ground truth, as COCO's evaluation ignores them.

Categories are COCO's `{"id", "name"}` records; masks with no class name are in category `DEFAULT_CATEGORY`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .rle import area_from_rle, mask_to_rle, rle_to_mask

__all__ = [
    "DEFAULT_CATEGORY",
    "Categories",
    "CocoFile",
    "annotation_geometry",
    "coco_json",
    "read_coco",
    "segmentation_to_mask",
    "segmentation_to_rle",
]

DEFAULT_CATEGORY = "object"


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A COCO `segmentation` -> compressed RLE `{"size": [H, W], "counts": str}`, as `COCO.annToRLE`.

    Args:
        segmentation: a list of polygons (each `[x0, y0, x1, y1, ...]`, pixels), an uncompressed RLE
            (`counts` a list of run lengths) or a compressed one (`counts` a str or bytes), or any of these
            as a JSON string.
        height, width: the image size the polygons are drawn on.

    Raises:
        ValueError: `segmentation` is none of these.
    """
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        rle = {
            "size": [int(v) for v in segmentation.get("size") or (height, width)],
            "counts": segmentation["counts"],
        }
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        size = [int(v) for v in segmentation.get("size") or (height, width)]
        rle = mask_utils.frPyObjects({"size": size, "counts": segmentation["counts"]}, *size)
    elif isinstance(segmentation, list) and all(isinstance(p, (list, tuple)) for p in segmentation):
        polygons = [[float(v) for v in polygon] for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return mask_to_rle(np.zeros((height, width), dtype=bool))
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    else:
        raise ValueError(
            "segmentation must be COCO polygons (a list of [x0, y0, x1, y1, ...]) or an RLE dict "
            f'{{"size": [H, W], "counts": ...}}, got {segmentation!r:.200}'
        )
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (forms as in `segmentation_to_rle`) -> `(H, W)` bool mask, as `COCO.annToMask`."""
    return rle_to_mask(segmentation_to_rle(segmentation, height, width))


def annotation_geometry(rle: dict[str, Any]) -> dict[str, Any]:
    """The geometry fields of a COCO annotation from a compressed RLE (`sam_hf.data.rle.mask_to_rle`,
    `segmentation_to_rle`).

    Returns:
        `{"segmentation": rle, "area": int, "bbox": [x, y, w, h]}`: area and XYWH box in pixels, computed by
        pycocotools from the RLE (`bbox` is `[0, 0, 0, 0]` for an empty mask).
    """
    encoded = {"size": list(rle["size"]), "counts": rle["counts"].encode()}
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
        "area": area_from_rle(rle),
        "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
    }


class Categories:
    """COCO categories by name: the ones given, then one per new name, with the next free id.

    Args:
        categories: COCO category records `{"id", "name", ...}` to start from (ids and extra fields kept).

    Raises:
        ValueError: two categories share an id or a name.
    """

    def __init__(self, categories: Iterable[dict[str, Any]] = ()):
        self._records: dict[str, dict[str, Any]] = {}
        for category in categories:
            self.add(category)

    def add(self, category: dict[str, Any]) -> None:
        """Add a COCO category record; one already there with the same id and name is kept.

        Raises:
            ValueError: its id or name is taken by another category.
        """
        name, category_id = str(category["name"]), int(category["id"])
        known = self._records.get(name)
        if known is not None and known["id"] == category_id:
            return
        taken = next((c for c in self._records.values() if c["id"] == category_id), None)
        if known is not None or taken is not None:
            raise ValueError(
                f"categories must have unique ids and names, got {category!r} beside {known or taken!r}"
            )
        self._records[name] = {**category, "id": category_id, "name": name}

    def id_for(self, name: str | None) -> int:
        """The id of category `name` (`DEFAULT_CATEGORY` when empty), added with the next free id if new."""
        name = name or DEFAULT_CATEGORY
        if name not in self._records:
            self.add({"id": max((c["id"] for c in self._records.values()), default=0) + 1, "name": name})
        return self._records[name]["id"]

    def to_coco(self) -> list[dict[str, Any]]:
        """The COCO `categories` list, by id."""
        return sorted(self._records.values(), key=lambda c: c["id"])


def coco_json(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: Categories,
    description: str,
) -> dict[str, Any]:
    """A COCO instances file: `images` and `annotations` as given, annotations numbered from 1 in order (COCO
    ids are unique in a file), and every category of `categories`."""
    numbered = [{**a, "id": i} for i, a in enumerate(annotations, start=1)]
    return {
        "info": {"description": description},
        "images": images,
        "annotations": numbered,
        "categories": categories.to_coco(),
    }


@dataclass
class CocoFile:
    """A COCO instances file as read by `read_coco`.

    Attributes:
        path: the JSON file.
        image_root: the folder the images' `file_name`s are relative to.
        images: the `images` records, in file order.
        annotations: per image (same order), its annotation records, other fields as in the file, with
            `segmentation` as a compressed RLE (`segmentation_to_rle`), `area` and `bbox` of that mask
            (`annotation_geometry`), `category_id` and `iscrowd`.
        categories: the file's categories.
    """

    path: Path
    image_root: Path
    images: list[dict[str, Any]]
    annotations: list[list[dict[str, Any]]] = field(default_factory=list)
    categories: Categories = field(default_factory=Categories)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.images[index]["file_name"]


def read_coco(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> CocoFile:
    """Read a COCO instances file and find its images.

    The image folder is `image_root` when given; otherwise the first of these that holds the first image:
    the JSON's folder; and for a JSON in a folder named `annotations` (COCO's layout,
    `coco/annotations/instances_val2017.json` beside `coco/val2017/`), the sibling folder named by the part
    of the file name after its last `_` (`val2017`), `images/<that part>`, `images/` and the parent itself.

    Raises:
        FileNotFoundError: an image is missing (the message names it, the folders tried and `image_root`).
        ValueError: the file is not COCO instances JSON.
    """
    path = Path(path)
    with open(path) as f:
        coco = json.load(f)
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"a COCO file must be a JSON object with an 'images' list, got {str(path)!r}")
    images = coco["images"]
    roots = [Path(image_root)] if image_root is not None else _image_roots(path)
    first = images[0]["file_name"] if images else None
    root = next((r for r in roots if first is None or (r / first).is_file()), roots[0])
    missing = [image["file_name"] for image in images if not (root / image["file_name"]).is_file()]
    if missing:
        tried = ", ".join(repr(str(r)) for r in roots)
        raise FileNotFoundError(
            f"image {str(root / missing[0])!r} of {str(path)!r} does not exist ({len(missing)} of {len(images)} "
            f"images missing; looked in {tried}); name the image folder with image_root (--image-root)"
        )
    by_image: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in images}
    for annotation in coco.get("annotations", []):
        image = annotation["image_id"]
        if image not in by_image:
            raise ValueError(
                f"annotation {annotation.get('id')!r} of {str(path)!r} names image {image!r}, which is not in images"
            )
        by_image[image].append(annotation)
    sizes = {image["id"]: (int(image["height"]), int(image["width"])) for image in images}
    annotations = [
        [
            {
                **a,
                **annotation_geometry(segmentation_to_rle(a["segmentation"], *sizes[image["id"]])),
                "category_id": int(a.get("category_id", 1)),
                "iscrowd": int(a.get("iscrowd", 0)),
            }
            for a in by_image[image["id"]]
        ]
        for image in images
    ]
    return CocoFile(path, root, images, annotations, Categories(coco.get("categories", [])))


def _image_roots(path: Path) -> list[Path]:
    folder = path.parent
    roots = [folder]
    if folder.name == "annotations":
        subset = path.stem.rsplit("_", 1)[-1]
        parent = folder.parent
        roots += [parent / subset, parent / "images" / subset, parent / "images", parent]
    return roots
