"""The data engine (`sam_hf.annotate`, `sam-hf annotate`) and `sam-hf generate` on a tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf import SamAutomaticMaskGenerator, SamHFConfig, SamHFModel
from sam_hf.cli import main
from sam_hf.data.mask_dataset import assign_splits
from sam_hf.inference.annotate import annotate

GENERATOR = {
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.95,
}


@pytest.fixture
def model() -> SamHFModel:
    """Tiny seeded model with its heads scaled so masks have usable scores (random heads give ~0)."""
    from conftest import randomize_positional_terms

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny")).eval()
    randomize_positional_terms(model)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(1e6)
        model.mask_decoder.iou_prediction_head.layers[-1].weight.mul_(100)
        model.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(0.5)
    return model


@pytest.fixture
def image_folder(tmp_path, photos) -> Path:
    """Four photos (one in a subfolder) and one corrupt file."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(photos["astronaut"][::8, ::8]).save(folder / "astronaut.png")
    Image.fromarray(photos["chelsea"][::6, ::6]).save(folder / "chelsea.jpg")
    Image.fromarray(photos["coffee"][::7, ::5]).save(folder / "more" / "coffee.png")
    Image.fromarray(photos["astronaut"][100:180, 50:170]).save(folder / "more" / "crop.bmp")
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    return folder


def _rows(dataset) -> dict[str, list[dict]]:
    """Rows of each split with decoded images as arrays, comparable with ==."""
    rows = {}
    for name, split in dataset.items():
        rows[name] = []
        for row in split:
            row = dict(row)
            row["image"] = np.asarray(row["image"]).tolist()
            rows[name].append(row)
    return rows


def _all(dataset):
    """Every split's rows in one `Dataset`, in image order."""
    from datasets import concatenate_datasets

    return concatenate_datasets(list(dataset.values())).sort("image_id")


def test_folder_to_dataset_and_coco(model, image_folder, tmp_path, caplog):
    from datasets import load_dataset, load_from_disk
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        dataset = annotate(image_folder, model, out, generator_kwargs=GENERATOR, show_progress=False)
    assert "broken.png" in caplog.text and "UnidentifiedImageError" in caplog.text
    skipped = json.loads((out / "work" / "skipped.json").read_text())
    assert [s["file_name"] for s in skipped] == ["broken.png"]

    names = ["astronaut.png", "chelsea.jpg", "more/coffee.png", "more/crop.bmp"]
    splits = assign_splits(names, 0.2)
    assert sorted(dataset) == ["test", "train"] and splits.count("test") == 1
    for name in ("train", "test"):
        assert dataset[name]["file_name"] == [n for n, s in zip(names, splits, strict=True) if s == name]
    assert _rows(load_from_disk(str(out))) == _rows(dataset)
    parquet = load_dataset("parquet", data_dir=str(out / "data"))
    for name in ("train", "test"):
        assert parquet[name]["file_name"] == dataset[name]["file_name"]
        assert parquet[name]["masks"] == dataset[name]["masks"]

    # Each row equals the generator's output on that image.
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **GENERATOR)
    for row in _all(dataset):
        image = np.asarray(Image.open(image_folder / row["file_name"]).convert("RGB"))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), image)
        assert (row["height"], row["width"]) == image.shape[:2]
        expected = generator.generate(image)
        assert len(expected) > 0
        assert row["masks"] == [r["segmentation"] for r in expected]
        assert row["area"] == [r["area"] for r in expected]
        # COCO's boxes (pycocotools' of each mask); the generator keeps the official one, 1 px narrower.
        assert row["bbox"] == [mask_utils.toBbox(rle).tolist() for rle in row["masks"]]
        assert row["bbox"] == [[x, y, w + 1, h + 1] for x, y, w, h in (r["bbox"] for r in expected)]
        assert row["category_id"] == [1] * len(expected) and row["category"] == ["object"] * len(expected)
        np.testing.assert_allclose(row["predicted_iou"], [r["predicted_iou"] for r in expected], rtol=1e-6)
        mask = mask_utils.decode(row["masks"][0])
        assert mask.shape == image.shape[:2] and mask.sum() == row["area"][0]

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 4
    assert len(coco.getAnnIds()) == sum(len(m) for m in _all(dataset)["masks"])
    assert [image["split"] for image in coco.loadImgs(coco.getImgIds())] == splits
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object"}]
    for ann in coco.loadAnns(coco.getAnnIds()):
        rle = coco.annToRLE(ann)
        assert ann["area"] == int(mask_utils.area(rle)) and ann["bbox"] == mask_utils.toBbox(rle).tolist()
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0


def test_assign_splits_is_a_stable_hash_split():
    names = [f"photos/img_{i:04d}.jpg" for i in range(2000)]
    splits = assign_splits(names, 0.2)
    assert abs(splits.count("test") / len(names) - 0.2) < 0.03
    assert assign_splits(list(reversed(names)), 0.2) == list(reversed(splits))
    # Adding images leaves every earlier image in its split.
    assert assign_splits(names + [f"new_{i}.jpg" for i in range(500)], 0.2)[: len(names)] == splits
    assert assign_splits(names, 0.0) == ["train"] * len(names)
    assert assign_splits(["only.png"], 0.2) == ["train"]
    for fraction in (0.01, 0.99):  # each split gets at least one image
        assert sorted(assign_splits(["a.png", "b.png"], fraction)) == ["test", "train"]
    for fraction in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\), got"):
            assign_splits(names, fraction)


def test_output_has_a_test_split_the_readers_find(model, image_folder, tmp_path):
    from datasets import load_from_disk

    from sam_hf.data.reader import load_segmentation_dataset

    out = tmp_path / "out"
    annotate(image_folder, model, out, generator_kwargs=GENERATOR, show_progress=False)
    test, stats = load_segmentation_dataset(str(out), split="test", mask_column="masks")
    assert len(test) == stats.num_rows == 1 and test["file_name"] == ["chelsea.jpg"]
    train, _ = load_segmentation_dataset(str(out), mask_column="masks")  # the default split
    assert train["file_name"] == ["astronaut.png", "more/coffee.png", "more/crop.bmp"]
    # Another fraction on the finished records only merges again; 0 writes no test split.
    dataset = annotate(image_folder, model, out, generator_kwargs=GENERATOR, test_fraction=0.0)
    assert list(dataset) == ["train"] and list(load_from_disk(str(out))) == ["train"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train.parquet"]
    with pytest.raises(ValueError, match="test_fraction must be in"):
        annotate(image_folder, model, tmp_path / "other", generator_kwargs=GENERATOR, test_fraction=1.0)
    assert not (tmp_path / "other").exists()


def test_cli_annotate_ctrl_c_says_how_to_resume(model, photos, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.roll(photos["astronaut"][::8, ::8], 5 * i, axis=1)).save(folder / f"{i:02d}.png")
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "sam_hf.cli", "annotate", str(folder), "--model", str(tmp_path / "model")]
    argv += ["--out", str(out), "--points-per-side", "8", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "work" / "records"
    deadline = time.monotonic() + 300
    while not (records.is_dir() and any(records.glob("*.json"))) and process.poll() is None:
        assert time.monotonic() < deadline, "no image was annotated in 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1] == "sam-hf annotate: interrupted; rerun the same command to resume where it stopped"
    assert "Traceback" not in stderr
    assert 0 < len(list(records.glob("*.json"))) < 12


def test_quality_filters(model, image_folder, tmp_path):
    full = _all(
        annotate(image_folder, model, tmp_path / "full", generator_kwargs=GENERATOR, show_progress=False)
    )
    iou_cut = float(np.median([v for values in full["predicted_iou"] for v in values]))
    area_cut = int(np.median([v for values in full["area"] for v in values]))
    filtered = _all(
        annotate(
            image_folder,
            model,
            tmp_path / "filtered",
            generator_kwargs=GENERATOR,
            min_predicted_iou=iou_cut,
            min_area=area_cut,
            min_stability_score=0.5,
            show_progress=False,
        )
    )
    kept = sum(len(m) for m in filtered["masks"])
    assert 0 < kept < sum(len(m) for m in full["masks"])
    for row in filtered:
        assert all(v >= iou_cut - 1e-6 for v in row["predicted_iou"])
        assert all(v >= area_cut for v in row["area"])
        assert all(v >= 0.5 - 1e-6 for v in row["stability_score"])


def test_interrupted_run_resumes_to_the_same_dataset(model, image_folder, tmp_path, monkeypatch):
    reference = annotate(
        image_folder, model, tmp_path / "reference", generator_kwargs=GENERATOR, show_progress=False
    )

    calls: list[tuple] = []
    original = SamAutomaticMaskGenerator.generate

    def interrupted(self, image):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(image.shape)
        return original(self, image)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        annotate(image_folder, model, out, generator_kwargs=GENERATOR, show_progress=False)
    records = sorted(p.name for p in (out / "work" / "records").iterdir())
    # broken.png (index 0) and two images are done; no partial or temporary record is left behind.
    assert records == ["00000000.json", "00000001.json", "00000002.json"]

    monkeypatch.setattr(
        SamAutomaticMaskGenerator, "generate", lambda self, image: (calls.append(1), original(self, image))[1]
    )
    calls.clear()
    resumed = annotate(image_folder, model, out, generator_kwargs=GENERATOR, show_progress=False)
    assert len(calls) == 2, "only the two remaining images are generated"
    assert _rows(resumed) == _rows(reference)


def test_resume_with_other_settings_is_refused(model, image_folder, tmp_path):
    out = tmp_path / "out"
    annotate(image_folder, model, out, generator_kwargs=GENERATOR, show_progress=False)
    with pytest.raises(ValueError, match="other images or settings"):
        annotate(
            image_folder,
            model,
            out,
            generator_kwargs={**GENERATOR, "points_per_side": 3},
            show_progress=False,
        )


def test_dataset_input_and_push_to_hub(model, photos, tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    source = Dataset.from_dict(
        {"picture": [photos["chelsea"][::6, ::6], photos["coffee"][::7, ::5]], "file_name": ["cat", "cup"]},
        features=Features({"picture": ImageFeature(), "file_name": Value("string")}),
    )
    pushed = []
    monkeypatch.setattr(
        DatasetDict,
        "push_to_hub",
        lambda self, repo, **kw: pushed.append(
            (repo, kw, {name: len(split) for name, split in self.items()})
        ),
    )
    dataset = annotate(
        source,
        model,
        tmp_path / "out",
        generator_kwargs=GENERATOR,
        image_column="picture",
        push_to_hub="me/sam-masks",
        private=True,
        show_progress=False,
    )
    assert assign_splits(["cat", "cup"], 0.2) == ["test", "train"]
    assert dataset["test"]["file_name"] == ["cat"] and dataset["train"]["file_name"] == ["cup"]
    assert np.array_equal(np.asarray(dataset["test"][0]["image"]), photos["chelsea"][::6, ::6])
    assert all(len(m) > 0 for m in _all(dataset)["masks"])
    assert pushed == [("me/sam-masks", {"private": True}, {"train": 1, "test": 1})]
    with pytest.raises(ValueError, match="image_column 'image' is not a column"):
        annotate(source, model, tmp_path / "other", generator_kwargs=GENERATOR)


def test_cli_generate_writes_rle_json_and_overlay(model, image_folder, tmp_path):
    from pycocotools import mask as mask_utils

    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "generated"
    args = [
        "generate",
        str(image_folder / "chelsea.jpg"),
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(out),
    ]
    args += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    assert main(args) == 0
    records = json.loads((out / "masks.json").read_text())
    image = np.asarray(Image.open(image_folder / "chelsea.jpg").convert("RGB"))
    assert len(records) > 0
    for record in records:
        assert mask_utils.decode(record["segmentation"]).sum() == record["area"]
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


def test_cli_annotate_folder(model, image_folder, tmp_path):
    from datasets import load_from_disk

    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "dataset"
    args = [
        "annotate",
        str(image_folder),
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(out),
        "--no-progress",
    ]
    args += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    args += ["--min-area", "10"]
    assert main(args) == 0
    dataset = _all(load_from_disk(str(out)))
    assert len(dataset) == 4 and all(a >= 10 for areas in dataset["area"] for a in areas)


@pytest.mark.parametrize("content", ["empty", "unreadable"])
def test_cli_annotate_without_a_readable_image_says_so_before_loading_the_model(
    content, tmp_path, capsys, monkeypatch
):
    import sam_hf.cli.annotate as cli_annotate

    folder = tmp_path / "images"
    folder.mkdir()
    if content == "unreadable":
        (folder / "a.png").write_bytes(b"not a PNG")
        (folder / "b.jpg").write_bytes(b"")
    monkeypatch.setattr(cli_annotate, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert main(["annotate", str(folder), "--model", "sam-hf-tiny", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    expected = "got none in" if content == "empty" else "got 2 unreadable in"
    assert (
        len(error) == 1
        and error[0].startswith("sam-hf annotate: error: cannot read IMAGES")
        and expected in error[0]
    )
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_give_the_same_dataset(model, image_folder, tmp_path):
    """The documented command, `accelerate launch --multi_gpu --num_machines 1 --num_processes 2 --no_python
    sam-hf annotate ...`, runs two CPU processes (ranks 0 and 1 each annotate their shard) and merges to the
    same dataset as one process. (`accelerate launch --cpu --num_processes 2` starts a single process in
    accelerate 1.15: its CPU launcher only spawns several processes through mpirun.)"""
    from conftest import console_script

    script = console_script("sam-hf")
    assert script is not None, "pip install -e . installs the sam-hf console script beside the interpreter"
    model.save_pretrained(tmp_path / "model")
    common = ["annotate", str(image_folder), "--model", str(tmp_path / "model")]
    common += ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "CUDA_VISIBLE_DEVICES": ""}
    single = subprocess.run(
        [script, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]  # = `accelerate launch`
    launch += ["--multi_gpu", "--num_machines", "1", "--num_processes", "2", "--no_python", script]
    double = subprocess.run(
        [*launch, *common, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True
    )
    assert double.returncode == 0, double.stderr[-3000:]
    from datasets import load_from_disk

    assert _rows(load_from_disk(str(tmp_path / "two"))) == _rows(load_from_disk(str(tmp_path / "one")))
    # Two distinct ranks of a world of 2 each finished their shard (images i, i + 2, ...: 3 and 2 of 5).
    assert re.search(r"annotate \[0/2\]: 100%.*\| 3/3", double.stderr), double.stderr[-3000:]
    assert re.search(r"annotate \[1/2\]: 100%.*\| 2/2", double.stderr), double.stderr[-3000:]
    assert len(list((tmp_path / "two" / "work" / "records").iterdir())) == 5
