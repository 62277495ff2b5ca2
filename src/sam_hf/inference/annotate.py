"""The data engine's automatic stage: automatic masks over many images -> a mask dataset and COCO JSON.

The output folder `out` is a mask dataset (layout, record and schema in `sam_hf.data.mask_dataset`): a
`DatasetDict` folder with `train` and, unless `test_fraction` is 0, `test` splits, parquet copies in `out/data/`
and COCO instances in `out/annotations.json`, every mask in category 1 `"object"`. Its per-mask columns hold
the generator's `predicted_iou`, `stability_score`, `point_coords` (the XY prompt) and `crop_box` (XYWH);
`bbox` and `area` are COCO's (pycocotools' of the mask), where the generator's own records keep the official
generator's box convention.

`out/work/` holds `manifest.json` (the image list and settings) and one record per image, written atomically
as each image finishes. A rerun skips images that have a record, so an interrupted run resumes without doing
any image twice or losing one. Unreadable images get a record with the reason (logged, and listed in
`out/work/skipped.json`) and no row.

With `accelerate launch`, process i handles images i, i + n, i + 2n, ...; the main process merges the
records once all processes are done. The split is made at the merge, from the file names alone, so the
records do not depend on it and a rerun with another `test_fraction` only merges again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..data.coco import DEFAULT_CATEGORY, Categories, annotation_geometry
from ..data.mask_dataset import check_test_fraction, write_atomic, write_mask_dataset
from ..data.sources import ImageSource, open_images
from .automatic_mask_generator import SamAutomaticMaskGenerator

__all__ = ["annotate"]

logger = logging.getLogger(__name__)

_RLE_MODE = "coco_rle"


def annotate(
    images: Any,
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
        images: any source `sam_hf.data.sources.open_images` takes (a folder of images, a dataset folder, a
            COCO file, a `datasets.Dataset`), or the `ImageSource` it returned.
        model: the `SamHFModel` (moved to this process's accelerator device).
        out: output folder; an existing one with the same images and settings is resumed.
        generator_kwargs: arguments of `SamAutomaticMaskGenerator` (its `output_mode` is always COCO RLE).
        min_predicted_iou, min_stability_score, min_area: quality filters applied to the generated masks,
            e.g. to keep only confident pseudo-labels.
        image_column: the image column when `images` is a dataset.
        test_fraction: share of the images held out in the `test` split (see
            `sam_hf.data.mask_dataset.assign_splits`); 0 writes only `train`.
        push_to_hub: a Hub dataset repo id to push the merged dataset to.
        private: create the Hub repo as private.
        show_progress: show a progress bar per process.

    Returns:
        The merged `datasets.DatasetDict` on the main process, `None` on the others.

    Raises:
        ValueError: `test_fraction` is out of range, or the source holds no readable image (before anything
            is written).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    check_test_fraction(test_fraction)  # before any image is annotated
    source = open_images(images, image_column)
    source.check_readable()
    # Without this flag PartialState ignores a torchrun/accelerate multi-process launch on CPU-only machines.
    state = PartialState(cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"))
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
                _annotation(r)
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


def _annotation(record: dict[str, Any]) -> dict[str, Any]:
    """A generator record -> the dataset's annotation (COCO geometry, category 1)."""
    return {
        **annotation_geometry(record["segmentation"]),
        "category_id": 1,
        "iscrowd": 0,
        "predicted_iou": record["predicted_iou"],
        "stability_score": record["stability_score"],
        "point_coords": record["point_coords"][0],
        "crop_box": record["crop_box"],
    }


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


def _merge(source: ImageSource, records_dir: Path, out: Path, test_fraction: float) -> Any:
    """Records -> the mask dataset on disk and the skipped list."""
    records = list(_records(records_dir, len(source)))
    skipped = [{"file_name": r["file_name"], "error": r["error"]} for r in records if "error" in r]
    write_atomic(records_dir.parent / "skipped.json", json.dumps(skipped, indent=2))
    readable = [r for r in records if "error" not in r]
    if not readable:
        raise ValueError(
            f"images must hold a readable image, got none of {len(records)} (reasons in {records_dir.parent / 'skipped.json'})"
        )
    return write_mask_dataset(
        out,
        readable,
        source.stored_image,
        test_fraction=test_fraction,
        categories=Categories([{"id": 1, "name": DEFAULT_CATEGORY}]),
        description="sam-hf automatic masks",
    )
