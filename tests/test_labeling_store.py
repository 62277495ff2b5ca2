"""Tests for the labelled dataset on disk (sam_hf.labeling.store): images in, lock, records, materialised dataset."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from sam_hf.data.coco import annotation_geometry
from sam_hf.data.mask_dataset import dataset_features as mask_dataset_features
from sam_hf.data.rle import mask_to_rle
from sam_hf.data.sources import open_images
from sam_hf.inference.annotate import annotate
from sam_hf.labeling import PROVENANCE_COLUMNS, DatasetLockedError, LabelStore
from sam_hf.labeling.store import dataset_features


@pytest.fixture
def image_folder(tmp_path, photos):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photos["astronaut"][:96, :128]).save(folder / "a.png")
    Image.fromarray(photos["coffee"][:64, :80]).save(folder / "sub" / "b.jpg")
    Image.fromarray(photos["chelsea"][:72, :72]).save(folder / "c.png")
    return folder


def _annotation(store, mask, stage="manual", class_name="cat"):
    ys, xs = np.nonzero(mask)
    return {
        "id": 1,
        **annotation_geometry(mask_to_rle(mask)),
        "category_id": store.category_id(class_name),
        "category": class_name,
        "iscrowd": 0,
        "predicted_iou": 0.5,
        "stability_score": 0.9,
        "point_coords": [float(xs[0]), float(ys[0])],
        "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
        "stage": stage,
        "num_clicks": 2,
        "num_strokes": 1,
        "seconds": 1.5,
        "model_id": "sam-hf-tiny",
        "model_revision": "r",
        "round": 0,
    }


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_schema_is_annotate_schema_plus_provenance():
    features = dataset_features()
    base = mask_dataset_features()
    assert {name: features[name] for name in base} == dict(base)
    assert set(features) - set(base) == set(PROVENANCE_COLUMNS)


def test_open_images_folder_and_errors(image_folder, tmp_path):
    source = open_images(image_folder)
    assert source.names == ["a.png", "c.png", "sub/b.jpg"]
    assert source.load(2).shape == (64, 80, 3)
    with pytest.raises(ValueError, match="image folder, a dataset folder.*no such file or folder"):
        open_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least one image"):
        open_images(tmp_path / "empty")


def test_open_images_reads_annotate_output_all_splits(image_folder, tmp_path, tiny_model):
    annotate(
        str(image_folder),
        tiny_model,
        tmp_path / "auto",
        generator_kwargs={"points_per_side": 2},
        show_progress=False,
    )
    source = open_images(tmp_path / "auto")
    assert sorted(source.names) == ["a.png", "c.png", "sub/b.jpg"]  # train and test splits together
    shapes = {name: source.load(i).shape for i, name in enumerate(source.names)}
    assert shapes["sub/b.jpg"] == (64, 80, 3)


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(image_folder, tmp_path):
    out = tmp_path / "out"
    store = LabelStore(out, open_images(image_folder))
    with pytest.raises(DatasetLockedError, match=f"process {os.getpid()}"):
        LabelStore(out, open_images(image_folder))
    store.release()
    LabelStore(out, open_images(image_folder)).release()  # released: opens again

    lock = out / "labeling" / "lock.json"
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "since": 0}))
    store = LabelStore(out, open_images(image_folder))  # stale: taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    store.release()
    assert not lock.exists()


def test_out_of_other_images_is_refused(image_folder, tmp_path, photos):
    LabelStore(tmp_path / "out", open_images(image_folder)).release()
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(photos["coffee"]).save(other / "x.png")
    with pytest.raises(ValueError, match="must include the 3 images labelled in .* got 3 of them missing"):
        LabelStore(tmp_path / "out", open_images(other))
    assert not (tmp_path / "out" / "labeling" / "lock.json").exists()  # a refused open leaves no lock


def test_records_resume_point_and_materialised_dataset(image_folder, tmp_path):
    store = LabelStore(tmp_path / "out", open_images(image_folder))
    assert store.first_unfinished() == 0
    assert store.materialize() is None  # nothing labelled yet
    mask = np.zeros((96, 128), bool)
    mask[10:30, 20:60] = True
    record = store.record(0) | {"width": 128, "height": 96, "finished": True}
    record["annotations"].append(_annotation(store, mask))
    store.write_record(record)
    store.write_record(store.record(2) | {"width": 80, "height": 64})  # visited, nothing accepted
    assert store.first_unfinished() == 1
    dataset = store.materialize()
    assert set(dataset) == {"train", "test"}
    rows = {row["file_name"]: row for split in dataset.values() for row in split}
    assert set(rows) == {"a.png", "sub/b.jpg"}
    row = rows["a.png"]
    assert row["stage"] == ["manual"] and row["category"] == ["cat"] and row["num_clicks"] == [2]
    assert row["num_strokes"] == [1]
    assert row["area"] == [int(mask.sum())] and row["image"].size == (128, 96)
    assert rows["sub/b.jpg"]["masks"] == []
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [a["stage"] for a in coco["annotations"]] == ["manual"]
    assert coco["annotations"][0]["model_id"] == "sam-hf-tiny"
    assert sorted(p.name for p in (tmp_path / "out" / "data").glob("*.parquet")) == [
        "test.parquet",
        "train.parquet",
    ]

    assert store.save_training_dataset(tmp_path / "train") == 1
    training = datasets.load_from_disk(str(tmp_path / "train"))
    assert list(training) == ["train"] and training["train"]["file_name"] == ["a.png"]
    store.release()


def test_rounds_continue_with_the_same_model(image_folder, tmp_path):
    store = LabelStore(tmp_path / "out", open_images(image_folder))
    assert store.start_round("sam-hf-tiny", "a") == 0
    assert store.start_round("sam-hf-tiny", "a") == 0
    assert store.start_round("/x/rounds/1", "b") == 1
    assert [r["round"] for r in store.rounds()] == [0, 1]
    assert store.round_folder(1) == tmp_path / "out" / "rounds" / "1"
    store.release()


def test_dataset_card_counts_masks_per_stage_and_model(image_folder, tmp_path):
    from sam_hf.labeling.store import dataset_card

    store = LabelStore(tmp_path / "out", open_images(image_folder))
    mask = np.zeros((96, 128), bool)
    mask[10:30, 20:60] = True
    record = store.record(0) | {"width": 128, "height": 96}
    record["annotations"] = [
        _annotation(store, mask),
        _annotation(store, mask, "auto"),
        _annotation(store, mask, "auto"),
    ]
    store.write_record(record)
    card = dataset_card(store, "user/cells")
    store.release()
    assert card.data.task_categories == ["image-segmentation"]
    assert "| manual | 1 |" in card.text and "| auto | 2 |" in card.text and "| semi | 0 |" in card.text
    assert "`sam-hf-tiny, r`: 3" in card.text and "3 masks on 1 images" in card.text


def test_new_images_are_appended_and_labels_kept(image_folder, tmp_path, photos):
    out = tmp_path / "out"
    store = LabelStore(out, open_images(image_folder))
    mask = np.zeros((72, 72), bool)
    mask[5:20, 5:30] = True
    store.write_record(
        store.record(1) | {"width": 72, "height": 72, "annotations": [_annotation(store, mask)]}
    )
    store.release()
    Image.fromarray(photos["coffee"][:40, :50]).save(image_folder / "0-first.png")  # sorts before the others
    store = LabelStore(out, open_images(image_folder))
    assert store.source.names == ["a.png", "c.png", "sub/b.jpg", "0-first.png"]
    assert store.record(1)["file_name"] == "c.png" and len(store.record(1)["annotations"]) == 1
    assert store.source.load(3).shape == (40, 50, 3)
    store.release()


def test_an_annotate_dataset_labelled_into_its_own_folder_keeps_its_masks(image_folder, tmp_path, tiny_model):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "auto"
    kwargs = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    auto = annotate(str(image_folder), tiny_model, out, generator_kwargs=kwargs, show_progress=False)
    before = {row["file_name"]: row["masks"] for split in auto.values() for row in split}
    assert sum(len(m) for m in before.values()) > 0
    store = LabelStore(out, open_images(out))
    mask = np.zeros((96, 128), bool)
    mask[40:50, 40:90] = True
    index = store.source.names.index("a.png")
    record = store.record(index)
    assert [a["stage"] for a in record["annotations"]] == ["imported"] * len(before["a.png"])
    store.write_record(
        record | {"annotations": [*record["annotations"], _annotation(store, mask, class_name="rock")]}
    )
    dataset = store.materialize()
    store.release()
    rows = {row["file_name"]: row for split in dataset.values() for row in split}
    assert set(rows) == set(before)
    assert rows["a.png"]["masks"][:-1] == before["a.png"] and rows["a.png"]["category"][-1] == "rock"
    for name in ("c.png", "sub/b.jpg"):
        assert rows[name]["masks"] == before[name]
    coco = COCO(str(out / "annotations.json"))
    assert {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())} == {"object": 1, "rock": 2}
    for ann in coco.loadAnns(coco.getAnnIds()):
        rle = coco.annToRLE(ann)
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist() and ann["area"] == int(mask_utils.area(rle))
    # Reopened, the folder is the source again: nothing is imported twice.
    store = LabelStore(out, open_images(out))
    assert len(store.record(index)["annotations"]) == len(before["a.png"]) + 1
    store.release()


def test_a_session_kept_in_work_is_resumed_with_categories(image_folder, tmp_path):
    from pycocotools import mask as mask_utils

    out = tmp_path / "out"
    store = LabelStore(out, open_images(image_folder))
    mask = np.zeros((96, 128), bool)
    mask[1:9, 2:7] = True
    old = {
        k: v for k, v in _annotation(store, mask).items() if k not in ("category", "category_id", "iscrowd")
    }
    old.update(class_name="cat", bbox=[2.0, 1.0, 4.0, 7.0])  # a record as sessions kept it in work/
    store.write_record(store.record(0) | {"width": 128, "height": 96, "annotations": [old]})
    store.release()
    os.replace(out / "labeling", out / "work")
    store = LabelStore(out, open_images(image_folder))
    (annotation,) = store.record(0)["annotations"]
    assert (annotation["category"], annotation["category_id"]) == ("cat", 1) and not (out / "work").exists()
    assert (
        annotation["bbox"]
        == [2.0, 1.0, 5.0, 8.0]
        == mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()
    )
    assert store.materialize()  # writes with the migrated categories
    store.release()
