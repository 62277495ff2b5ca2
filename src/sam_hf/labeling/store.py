"""The labelled dataset on disk: one writer, a record per image written at once, a dataset materialised from them.

The output folder `out` is a mask dataset (`sam_hf.data.mask_dataset`: layout, record and schema shared with
`sam-hf annotate`, so every command that reads annotate output reads this one with no extra flags), with the
per-mask `PROVENANCE_COLUMNS` added and each class name as the mask's COCO category. The session's state is in
`out/labeling/` (apart from `sam-hf annotate`'s `out/work/`, so an annotate folder can be labelled in place):
- `out/labeling/records/<index:08d>.json`: the source of truth, one record per image touched, rewritten atomically
  on every accept, delete and finish, so a crash loses at most the mask in progress. A record holds the
  image's `annotations` (with provenance and the labelling `round`) and whether the image is `finished`;
- `out/labeling/manifest.json`: the image list, by name. Reopening `out` with more images appends the new ones;
  an image of the list that the source no longer has is an error;
- `out/labeling/rounds.json`: the model of each labelling round (see `LabelSession.round_stats`);
- `out/labeling/lock.json`: the lock of the one process writing `out` (`DatasetLockedError` for any other);
- `out/rounds/<n>/`: the fine-tuning output of retraining round n (`sam_hf.labeling.retrain`).

Images that already carry masks (a COCO file's annotations, a mask dataset's `masks`, e.g. `sam-hf annotate`
output, labelled into its own folder or another) keep them: their record is written when the image first
joins the manifest, with the masks as objects of stage `"imported"`.

The `load_from_disk` folder is rebuilt from the records (`materialize`), never edited in place.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..data.coco import DEFAULT_CATEGORY, Categories, annotation_geometry
from ..data.mask_dataset import dataset_features as mask_dataset_features
from ..data.mask_dataset import write_atomic, write_mask_dataset
from ..data.sources import ImageSource

__all__ = [
    "PROVENANCE_COLUMNS",
    "STAGES",
    "DatasetLockedError",
    "LabelStore",
    "dataset_card",
    "dataset_features",
]

# Where a mask came from, as the SAM paper's data engine names its stages: "manual" (clicks, assisted-manual
# stage), "semi" (clicks that add an object the automatic masks missed, semi-automatic stage), "auto" (an
# automatic mask the annotator accepted unchanged); and "imported", a mask the image already had.
STAGES = ("manual", "semi", "auto", "imported")
# Per-mask columns added to the mask dataset's schema, with their `datasets` value types.
_PROVENANCE = {
    "stage": "string",
    "num_clicks": "int32",
    "num_strokes": "int32",
    "seconds": "float32",
    "model_id": "string",
    "model_revision": "string",
}
PROVENANCE_COLUMNS = tuple(_PROVENANCE)
_IMPORTED = {
    "stage": "imported",
    "num_clicks": 0,
    "num_strokes": 0,
    "seconds": None,
    "model_id": "",
    "model_revision": "",
}
_LOCK_NAME = "lock.json"


class DatasetLockedError(RuntimeError):
    """Another live process holds the lock of the output folder."""


def dataset_features() -> Any:
    """The mask dataset's features (`sam_hf.data.mask_dataset.dataset_features`) plus `PROVENANCE_COLUMNS`."""
    return mask_dataset_features(_provenance_features())


def _provenance_features() -> dict[str, Any]:
    from datasets import Value

    return {name: Value(dtype) for name, dtype in _PROVENANCE.items()}


class LabelStore:
    """The output folder of a labelling session (layout in the module docstring).

    Opening takes the lock; `close` releases it. A lock left by a process that no longer runs (a crash) is
    taken over.

    Args:
        out: the output folder (created if missing).
        source: the images, from `sam_hf.data.sources.open_images`.
        test_fraction: share of the labelled images in the `test` split, as `sam-hf annotate`'s.

    Raises:
        DatasetLockedError: another live process on this machine holds `out` (the message names its pid).
        ValueError: `out` holds labels of an image that `source` does not have.
    """

    def __init__(self, out: str | os.PathLike, source: ImageSource, test_fraction: float = 0.2):
        self.out = Path(out)
        self.source = source
        self.test_fraction = test_fraction
        self.work = self.out / "labeling"
        _move_state_out_of_work(self.out, self.work)
        self.records_dir = self.work / "records"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.work / _LOCK_NAME
        self._acquire_lock()
        try:
            self._check_or_write_manifest()
        except BaseException:
            self.release()
            raise

    # ------------------------------------------------------------------------------------------------ lock

    def _acquire_lock(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._lock_holder()
                if holder is not None and _is_alive(holder):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                    raise DatasetLockedError(
                        f"{str(self.out)!r} is being labelled by process {holder['pid']} on "
                        f"{holder.get('host')} (since {since}); close that session (or that browser app) first, "
                        f"or label into another out folder. If that process is gone, delete {self._lock_path}"
                    ) from None
                self._lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._locked = True
            return
        raise DatasetLockedError(
            f"could not take the lock {self._lock_path}: another process keeps taking it"
        )

    def _lock_holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._lock_path.read_text())
        except (OSError, ValueError):  # half-written by a process that died while taking it
            return None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if getattr(self, "_locked", False):
            holder = self._lock_holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self._lock_path.unlink(missing_ok=True)
            self._locked = False

    # ------------------------------------------------------------------------------------------- records

    def _check_or_write_manifest(self) -> None:
        """Order the source as the manifest (new images last), import the masks of images new to it."""
        path = self.work / "manifest.json"
        known = json.loads(path.read_text())["images"] if path.exists() else []
        labelled = set(known)
        missing = labelled - set(self.source.names)
        if missing:
            raise ValueError(
                f"images must include the {len(known)} images labelled in {str(self.out)!r}, got {len(missing)} "
                f"of them missing from {self.source.origin} (first {sorted(missing)[0]!r}); label into a new out "
                "folder to start over"
            )
        names = known + [n for n in self.source.names if n not in labelled]
        self.source = self.source.select(names)
        self.categories = Categories(self.source.categories.to_coco())
        for record in self.records():
            for annotation in record["annotations"]:
                self.categories.add({"id": annotation["category_id"], "name": annotation["category"]})
        if self.source.annotations is not None:
            for index in range(len(known), len(names)):
                self._import(index)
        if names != known:
            write_atomic(path, json.dumps({"images": names}))

    def _import(self, index: int) -> None:
        """Write the record of a new image that carries masks, unless one is there (a crash after writing it)."""
        if self._record_path(index).exists():
            return
        names = {c["id"]: c["name"] for c in self.categories.to_coco()}
        annotations = [
            {**_IMPORTED, **a, "id": number, "category": names[a["category_id"]], "round": -1}
            for number, a in enumerate(self.source.annotations[index], start=1)
        ]
        # An RLE holds its image's size; an image without masks is read for it.
        height, width = (
            annotations[0]["segmentation"]["size"] if annotations else self.source.load(index).shape[:2]
        )
        self.write_record(
            {**self.record(index), "height": height, "width": width, "annotations": annotations}
        )

    def _record_path(self, index: int) -> Path:
        return self.records_dir / f"{index:08d}.json"

    def record(self, index: int) -> dict[str, Any]:
        """The record of image `index`: the stored one, or a new empty one (`finished` False)."""
        path = self._record_path(index)
        if path.exists():
            return json.loads(path.read_text())
        return {
            "image_id": index,
            "file_name": self.source.names[index],
            "annotations": [],
            "finished": False,
        }

    def write_record(self, record: dict[str, Any]) -> None:
        """Store a record atomically (it must carry `width` and `height`)."""
        write_atomic(self._record_path(record["image_id"]), json.dumps(record))

    def records(self) -> Iterator[dict[str, Any]]:
        """The stored records in image order."""
        for index in range(len(self.source)):
            if self._record_path(index).exists():
                yield self.record(index)

    def first_unfinished(self) -> int:
        """Index of the first image not marked finished (`len(images)` when all are)."""
        for index in range(len(self.source)):
            path = self._record_path(index)
            if not path.exists() or not json.loads(path.read_text()).get("finished"):
                return index
        return len(self.source)

    # -------------------------------------------------------------------------------------------- rounds

    def rounds(self) -> list[dict[str, Any]]:
        """The labelling rounds so far: `{"round", "model_id", "model_revision"}` each."""
        path = self.work / "rounds.json"
        return json.loads(path.read_text()) if path.exists() else []

    def start_round(self, model_id: str, model_revision: str) -> int:
        """The round labelled with this model: the last one if it used the same model, else a new one."""
        rounds = self.rounds()
        if rounds and (rounds[-1]["model_id"], rounds[-1]["model_revision"]) == (model_id, model_revision):
            return rounds[-1]["round"]
        number = rounds[-1]["round"] + 1 if rounds else 0
        rounds.append({"round": number, "model_id": model_id, "model_revision": model_revision})
        write_atomic(self.work / "rounds.json", json.dumps(rounds, indent=2))
        return number

    def round_folder(self, number: int) -> Path:
        """`out/rounds/<number>`: where retraining round `number` writes its fine-tuning output."""
        return self.out / "rounds" / str(number)

    # ----------------------------------------------------------------------------------------- datasets

    def _write(self, folder: Path, records: list[dict[str, Any]], test_fraction: float) -> Any:
        return write_mask_dataset(
            folder,
            records,
            self.source.stored_image,
            test_fraction=test_fraction,
            categories=self.categories,
            description="sam-hf label: masks made in the browser with SAM",
            extra_features=_provenance_features(),
        )

    def category_id(self, name: str | None) -> int:
        """The COCO category id of class `name` (`sam_hf.data.coco.DEFAULT_CATEGORY` when empty); a new name
        gets the next free id."""
        return self.categories.id_for(name)

    def materialize(self) -> Any:
        """Rebuild `out/` (dataset, parquet files, COCO JSON) from the records; returns the `DatasetDict`
        (None while no image has a record: `datasets` cannot reload an empty dataset)."""
        records = list(self.records())
        return self._write(self.out, records, self.test_fraction) if records else None

    def save_training_dataset(self, folder: str | os.PathLike) -> int:
        """Save every labelled image with at least one mask as a mask dataset with one `train` split, for
        fine-tuning; returns the number of masks in it."""
        records = [r for r in self.records() if r["annotations"]]
        if records:
            self._write(Path(folder), records, 0.0)
        return sum(len(r["annotations"]) for r in records)


def _move_state_out_of_work(out: Path, state: Path) -> None:
    """Move a labelling session's state kept in `out/work/` to `state`, its records in today's form: the class
    name as a COCO category, area and box recomputed by pycocotools. `annotate`'s `work/` (its manifest has
    `settings`) stays."""
    manifest = out / "work" / "manifest.json"
    if state.exists() or not manifest.is_file() or "settings" in json.loads(manifest.read_text()):
        return
    categories = Categories()
    for path in sorted((out / "work" / "records").glob("*.json")):
        record = json.loads(path.read_text())
        for annotation in record["annotations"]:
            name = annotation.pop("class_name", "") or DEFAULT_CATEGORY
            annotation.update(annotation_geometry(annotation["segmentation"]))
            annotation.update(category=name, category_id=categories.id_for(name), iscrowd=0)
        write_atomic(path, json.dumps(record))
    os.replace(out / "work", state)


def _is_alive(holder: dict[str, Any]) -> bool:
    """Whether the lock holder may still run: its pid exists here, or it is on another host (unknowable)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

Instance masks labelled with sam_hf's `sam-hf label`, SAM's data engine in the browser:
{{ num_masks }} masks on {{ num_images }} images.

| stage | masks | how they were made |
|---|---|---|
| manual | {{ stages.manual }} | clicks and boxes, SAM answering each, and brush strokes (assisted-manual stage) |
| semi | {{ stages.semi }} | clicks adding objects the automatic masks missed (semi-automatic stage) |
| auto | {{ stages.auto }} | automatic masks accepted unchanged |
| imported | {{ stages.imported }} | masks the images already had |

Models that made them (id, revision: masks):
{% for model, count in models %}
- `{{ model }}`: {{ count }}
{% endfor %}

Columns: those of `sam-hf annotate` output (`image`, `masks` as COCO RLE, `bbox` XYWH, `area`, `category_id`,
`category` (the class name), `iscrowd`, `predicted_iou`, `stability_score`, `point_coords`, `crop_box`) plus,
per mask, `stage`, `num_clicks`, `num_strokes`, `seconds`, `model_id` and `model_revision`. Load with
`datasets.load_dataset("{{ repo_id }}")`.
"""


def dataset_card(store: LabelStore, repo_id: str) -> Any:
    """The Hub dataset card of the labelled dataset: masks per stage and the models that made them."""
    from collections import Counter

    from huggingface_hub import DatasetCard, DatasetCardData

    annotations = [a for record in store.records() for a in record["annotations"]]
    models = Counter(f"{a['model_id']}, {a['model_revision']}" for a in annotations)
    return DatasetCard.from_template(
        DatasetCardData(task_categories=["image-segmentation"], tags=["sam_hf", "segment-anything"]),
        template_str=_CARD_TEMPLATE,
        repo_id=repo_id,
        num_masks=len(annotations),
        num_images=sum(1 for _ in store.records()),
        stages={stage: sum(a["stage"] == stage for a in annotations) for stage in STAGES},
        models=sorted(models.items()),
    )
