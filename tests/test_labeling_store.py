"""Tests for the labelled dataset on disk (sam_hf.labeling.store): images in, lock, records, materialised dataset."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from sam_hf.data.rle import coco_encode_rle, mask_to_rle_pytorch
from sam_hf.inference.annotate import annotate
from sam_hf.inference.annotate import dataset_features as annotate_features
from sam_hf.labeling import PROVENANCE_COLUMNS, DatasetLockedError, LabelStore
from sam_hf.labeling.store import dataset_features, open_images


@pytest.fixture
def image_folder(tmp_path, photos):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(photos["astronaut"][:96, :128]).save(folder / "a.png")
    Image.fromarray(photos["coffee"][:64, :80]).save(folder / "sub" / "b.jpg")
    Image.fromarray(photos["chelsea"][:72, :72]).save(folder / "c.png")
    return folder


def _annotation(mask, stage="manual"):
    import torch

    ys, xs = np.nonzero(mask)
    return {
        "id": 1,
        "segmentation": coco_encode_rle(mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]),
        "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs)), float(np.ptp(ys))],
        "area": int(mask.sum()),
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
        "class_name": "cat",
        "round": 0,
    }


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_schema_is_annotate_schema_plus_provenance():
    features = dataset_features()
    base = annotate_features()
    assert {name: features[name] for name in base} == dict(base)
    assert set(features) - set(base) == set(PROVENANCE_COLUMNS)


def test_open_images_folder_and_errors(image_folder, tmp_path):
    source = open_images(image_folder)
    assert source.names == ["a.png", "c.png", "sub/b.jpg"]
    assert source.load(2).shape == (64, 80, 3)
    with pytest.raises(ValueError, match="folder of images or a dataset folder"):
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

    lock = out / "work" / "lock.json"
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
    with pytest.raises(ValueError, match="labels of other images"):
        LabelStore(tmp_path / "out", open_images(other))
    assert not (tmp_path / "out" / "work" / "lock.json").exists()  # a refused open leaves no lock


def test_records_resume_point_and_materialised_dataset(image_folder, tmp_path):
    store = LabelStore(tmp_path / "out", open_images(image_folder))
    assert store.first_unfinished() == 0
    assert store.materialize() is None  # nothing labelled yet
    mask = np.zeros((96, 128), bool)
    mask[10:30, 20:60] = True
    record = store.record(0) | {"width": 128, "height": 96, "finished": True}
    record["annotations"].append(_annotation(mask))
    store.write_record(record)
    store.write_record(store.record(2) | {"width": 80, "height": 64})  # visited, nothing accepted
    assert store.first_unfinished() == 1
    dataset = store.materialize()
    assert set(dataset) == {"train", "test"}
    rows = {row["file_name"]: row for split in dataset.values() for row in split}
    assert set(rows) == {"a.png", "sub/b.jpg"}
    row = rows["a.png"]
    assert row["stage"] == ["manual"] and row["class_name"] == ["cat"] and row["num_clicks"] == [2]
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
    assert training["file_name"] == ["a.png"]
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
    record["annotations"] = [_annotation(mask), _annotation(mask, "auto"), _annotation(mask, "auto")]
    store.write_record(record)
    card = dataset_card(store, "user/cells")
    store.release()
    assert card.data.task_categories == ["image-segmentation"]
    assert "| manual | 1 |" in card.text and "| auto | 2 |" in card.text and "| semi | 0 |" in card.text
    assert "`sam-hf-tiny, r`: 3" in card.text and "3 masks on 1 images" in card.text
