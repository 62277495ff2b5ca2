"""The labelled dataset on disk: one writer, a record per image written at once, a dataset materialised from them.

Layout of the output folder `out` (the same as `sam-hf annotate`'s, see `sam_hf.inference.annotate`, so every
command that reads annotate output reads this one with no extra flags):

- `out/` itself is a `DatasetDict.save_to_disk` folder with a `train` and (with two or more images) a `test`
  split (`assign_splits`; a single image may form a `test` split alone), one row per image that has a record, with `dataset_features()`: annotate's
  columns plus, per mask, the provenance columns of `PROVENANCE_COLUMNS`;
- `out/data/<split>.parquet` and `out/annotations.json` (COCO instances, provenance on each annotation);
- `out/work/records/<index:08d>.json`: the source of truth, one record per image touched, rewritten atomically
  (temp file + rename) on every accept, delete and finish, so a crash loses at most the mask in progress.
  A record holds the image's `annotations` (annotate's fields plus provenance and the labelling `round`) and
  whether the image is `finished`;
- `out/work/manifest.json`: the image list (reopening `out` with other images is an error);
- `out/work/rounds.json`: the model of each labelling round (see `LabelSession.round_stats`);
- `out/work/lock.json`: the lock of the one process writing `out` (`DatasetLockedError` for any other);
- `out/rounds/<n>/`: the fine-tuning output of retraining round n (`sam_hf.labeling.retrain`).

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

from ..inference.annotate import ImageSource, assign_splits, coco_instances, write_atomic
from ..inference.annotate import dataset_features as annotate_features

__all__ = [
    "PROVENANCE_COLUMNS",
    "STAGES",
    "DatasetLockedError",
    "LabelStore",
    "coco_json",
    "dataset_card",
    "dataset_features",
    "open_images",
]

# Where a mask came from, as the SAM paper's data engine names its stages: "manual" (clicks, assisted-manual
# stage), "semi" (clicks that add an object the automatic masks missed, semi-automatic stage), "auto" (an
# automatic mask the annotator accepted unchanged).
STAGES = ("manual", "semi", "auto")
# Per-mask columns added to annotate's schema.
PROVENANCE_COLUMNS = (
    "stage",
    "num_clicks",
    "num_strokes",
    "seconds",
    "model_id",
    "model_revision",
    "class_name",
)
_LOCK_NAME = "lock.json"


class DatasetLockedError(RuntimeError):
    """Another live process holds the lock of the output folder."""


def dataset_features() -> Any:
    """`sam_hf.inference.annotate.dataset_features()` plus the per-mask `PROVENANCE_COLUMNS`."""
    from datasets import List, Value

    features = annotate_features()
    features["stage"] = List(Value("string"))
    features["num_clicks"] = List(Value("int32"))
    features["num_strokes"] = List(Value("int32"))
    features["seconds"] = List(Value("float32"))
    features["model_id"] = List(Value("string"))
    features["model_revision"] = List(Value("string"))
    features["class_name"] = List(Value("string"))
    return features


def open_images(images: Any, image_column: str = "image") -> ImageSource:
    """The images to label: a folder of image files, a `load_from_disk` dataset folder (all splits in order,
    e.g. `sam-hf annotate` output) or a `datasets.Dataset`/`DatasetDict` with an `image_column`.

    Raises:
        ValueError: `images` is none of these, or holds no image.
    """
    import datasets

    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise ValueError(
                f"images must be a folder of images or a dataset folder (datasets.save_to_disk), got {str(images)!r}"
            )
        if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
            images = datasets.load_from_disk(str(folder))
    if isinstance(images, datasets.DatasetDict):
        images = datasets.concatenate_datasets(list(images.values()))
    source = ImageSource(images, image_column)
    if len(source) == 0:
        raise ValueError(f"images must hold at least one image, got none in {images!r:.200}")
    return source


class LabelStore:
    """The output folder of a labelling session (layout in the module docstring).

    Opening takes the lock; `close` releases it. A lock left by a process that no longer runs (a crash) is
    taken over.

    Args:
        out: the output folder (created if missing).
        source: the images, from `open_images`.
        test_fraction: share of the labelled images in the `test` split, as `sam-hf annotate`'s.

    Raises:
        DatasetLockedError: another live process on this machine holds `out` (the message names its pid).
        ValueError: `out` holds a session on other images.
    """

    def __init__(self, out: str | os.PathLike, source: ImageSource, test_fraction: float = 0.2):
        self.out = Path(out)
        self.source = source
        self.test_fraction = test_fraction
        self.work = self.out / "work"
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
        path = self.work / "manifest.json"
        manifest = {"images": self.source.names}
        if path.exists():
            previous = json.loads(path.read_text())
            if previous.get("images") != manifest["images"]:
                raise ValueError(
                    f"out {str(self.out)!r} holds labels of other images ({len(previous.get('images', []))} "
                    f"images, first {previous.get('images', [None])[0]!r}); use a new out folder for these "
                    f"{len(self.source)} images"
                )
            return
        write_atomic(path, json.dumps(manifest))

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

    def _rows(self, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            annotations = record["annotations"]
            row = {
                "image": self.source.stored_image(record["image_id"]),
                "image_id": record["image_id"],
                "file_name": record["file_name"],
                "width": record["width"],
                "height": record["height"],
            }
            for column in ("bbox", "area", "predicted_iou", "stability_score", "point_coords", "crop_box"):
                row[column] = [a[column] for a in annotations]
            row["masks"] = [a["segmentation"] for a in annotations]
            for column in PROVENANCE_COLUMNS:
                row[column] = [a[column] for a in annotations]
            yield row

    def _dataset(self, records: list[dict[str, Any]], cache: str) -> Any:
        from datasets import Dataset

        # A fresh cache folder each time: from_generator must not reuse rows cached from earlier records.
        return Dataset.from_generator(
            self._rows, features=dataset_features(), gen_kwargs={"records": records}, cache_dir=cache
        )

    def materialize(self) -> Any:
        """Rebuild `out/` (dataset, parquet files, COCO JSON) from the records; returns the `DatasetDict`
        (None while no image has a record: `datasets` cannot reload an empty dataset)."""
        import tempfile

        from datasets import DatasetDict, load_from_disk

        records = list(self.records())
        if not records:
            return None
        splits = assign_splits([r["file_name"] for r in records], self.test_fraction)
        write_atomic(self.out / "annotations.json", json.dumps(coco_json(records, splits)))
        with tempfile.TemporaryDirectory(dir=self.work) as cache:
            rows = self._dataset(records, cache)
            dataset = DatasetDict(
                {
                    name: rows.select([i for i, split in enumerate(splits) if split == name])
                    for name in ("train", "test")
                    if name in splits  # one image alone may be in test: an empty split would not reload
                }
            )
            dataset.save_to_disk(str(self.out))
            parquet = self.out / "data"
            parquet.mkdir(exist_ok=True)
            for stale in parquet.glob("*.parquet"):
                stale.unlink()
            for name, split in dataset.items():
                split.to_parquet(str(parquet / f"{name}.parquet"))
        return load_from_disk(str(self.out))

    def save_training_dataset(self, folder: str | os.PathLike) -> int:
        """Save every labelled image with at least one mask, all splits together, as one `Dataset` folder
        for fine-tuning; returns the number of masks in it."""
        import tempfile

        records = [r for r in self.records() if r["annotations"]]
        if not records:
            return 0
        with tempfile.TemporaryDirectory(dir=self.work) as cache:
            self._dataset(records, cache).save_to_disk(str(folder))
        return sum(len(r["annotations"]) for r in records)


def coco_json(records: list[dict[str, Any]], splits: list[str]) -> dict[str, Any]:
    """COCO instances of the records (annotate's `coco_instances`), each annotation with its provenance columns."""
    coco = coco_instances(records, splits)
    coco["info"] = {"description": "sam-hf label: masks made in the browser with SAM"}
    stored = [a for record in records for a in record["annotations"]]
    for annotation, source in zip(coco["annotations"], stored, strict=True):
        annotation.update({column: source[column] for column in PROVENANCE_COLUMNS})
    return coco


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

Models that made them (id, revision: masks):
{% for model, count in models %}
- `{{ model }}`: {{ count }}
{% endfor %}

Columns: those of `sam-hf annotate` output (`image`, `masks` as COCO RLE, `bbox` XYWH, `area`, `predicted_iou`,
`stability_score`, `point_coords`, `crop_box`) plus, per mask, `stage`, `num_clicks`, `num_strokes`, `seconds`,
`model_id`,
`model_revision` and `class_name`. Load with `datasets.load_dataset("{{ repo_id }}")`.
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
