"""Tests for sam_hf.data.reader: sources, mask formats and counting of unusable rows."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from sam_hf.data.reader import load_segmentation_dataset, to_instances


def _label_map(height=24, width=32):
    label = np.zeros((height, width), np.uint8)
    label[2:10, 3:12] = 1
    label[14:22, 18:30] = 4
    return label


def _image(height=24, width=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _rle_encode(mask):
    flat = mask.T.reshape(-1)
    counts, value, run = [], False, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_label_map_gives_one_instance_per_id():
    image, masks = to_instances({"image": Image.fromarray(_image()), "label": Image.fromarray(_label_map())})
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert masks.shape == (2, 24, 32) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], _label_map() == 1)
    np.testing.assert_array_equal(masks[1], _label_map() == 4)


def test_binary_and_rle_formats():
    label = _label_map()
    binary = [label == 1, label == 4, np.zeros_like(label, bool)]
    _, masks = to_instances({"image": _image(), "label": binary})
    assert masks.shape == (2, 24, 32)  # the empty instance is dropped
    rles = [_rle_encode(label == 1), _rle_encode(label == 4)]
    _, decoded = to_instances({"image": _image(), "label": rles}, mask_format="rle")
    np.testing.assert_array_equal(decoded, masks)


def test_unusable_rows_are_counted(tmp_path):
    rows = {
        "image": [Image.fromarray(_image(seed=i)) for i in range(4)],
        "label": [
            Image.fromarray(_label_map()),
            Image.fromarray(np.zeros((24, 32), np.uint8)),  # empty
            Image.fromarray(_label_map(20, 32)),  # size mismatch
            Image.fromarray(_label_map()),
        ],
    }
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).cast_column(
        "label", datasets.Image()
    ).save_to_disk(str(tmp_path / "ds"))
    dataset, stats = load_segmentation_dataset(str(tmp_path / "ds"))
    assert len(dataset) == 2
    assert (stats.num_rows, stats.num_usable, stats.num_instances) == (4, 2, 4)
    assert dict(stats.unusable) == {"empty_mask": 1, "size_mismatch": 1}
    assert stats.unusable_indices == [1, 2]


def test_imagefolder_source(tmp_path):
    folder = tmp_path / "folder" / "train"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_image(seed=i)).save(folder / f"{i}.png")
    metadata = [{"file_name": f"{i}.png", "label": (_label_map() == 1).tolist()} for i in range(3)]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metadata))
    dataset, stats = load_segmentation_dataset(str(tmp_path / "folder"), mask_format="label_map")
    assert stats.num_usable == 3
    _, masks = to_instances(dataset[0], mask_format=stats.mask_format)
    assert masks.shape == (1, 24, 32)
    np.testing.assert_array_equal(masks[0], _label_map() == 1)


def test_coco_json_polygons_and_rle(tmp_path):
    from pycocotools.coco import COCO

    for i in range(2):
        Image.fromarray(_image(seed=i)).save(tmp_path / f"{i}.png")
    square = [[3.0, 2.0, 11.0, 2.0, 11.0, 9.0, 3.0, 9.0]]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 24, "width": 32} for i in range(2)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": square, "iscrowd": 0},
            {
                "id": 2,
                "image_id": 0,
                "category_id": 1,
                "segmentation": _rle_encode(_label_map() == 4),
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    dataset, stats = load_segmentation_dataset(str(tmp_path / "coco.json"))
    assert (stats.num_rows, stats.num_usable, dict(stats.unusable)) == (2, 1, {"empty_mask": 1})
    _, masks = to_instances(dataset[0], mask_format=stats.mask_format)
    assert masks.shape == (2, 24, 32)
    oracle = COCO(str(tmp_path / "coco.json"))
    for mask, annotation in zip(masks, oracle.loadAnns([1, 2]), strict=True):
        np.testing.assert_array_equal(mask, oracle.annToMask(annotation).astype(bool))
    assert masks[0].sum() == 8 * 7  # the 8x7 polygon covers 56 pixels, as pycocotools draws it


def test_polygons_are_rasterised_as_pycocotools_does(tmp_path):
    """A polygon's mask equals `COCO.annToMask` (cocoapi's own rasteriser), for squares and random shapes."""
    from pycocotools.coco import COCO

    from sam_hf.data.coco import segmentation_to_mask

    rng = np.random.default_rng(0)
    polygons = [
        [[10.0, 10.0, 60.0, 10.0, 60.0, 60.0, 10.0, 60.0]],
        [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]],
    ]
    polygons += [[rng.uniform(0, 40, 2 * int(rng.integers(3, 8))).round(1).tolist()] for _ in range(30)]
    coco = {
        "images": [{"id": 1, "file_name": "x.png", "height": 70, "width": 80}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": 1, "segmentation": p, "iscrowd": 0}
            for i, p in enumerate(polygons, start=1)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    oracle = COCO(str(tmp_path / "c.json"))
    for annotation in oracle.loadAnns(oracle.getAnnIds()):
        expected = oracle.annToMask(annotation).astype(bool)
        np.testing.assert_array_equal(segmentation_to_mask(annotation["segmentation"], 70, 80), expected)
    assert segmentation_to_mask(polygons[0], 70, 80).sum() == 2500
    assert segmentation_to_mask(polygons[1], 70, 80).sum() == 16


def _standard_layout(root, photos):
    """COCO's own layout: coco/annotations/instances_val2017.json beside coco/val2017/."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(photos["coffee"][:60, :80]).save(root / "val2017" / "000001.jpg")
    mask = np.zeros((60, 80), bool)
    mask[10:40, 20:50] = True
    crowd = np.zeros((60, 80), bool)
    crowd[45:55, 5:70] = True
    coco = {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": 60, "width": 80}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [[20, 10, 50, 10, 50, 40, 20, 40]],
                "iscrowd": 0,
            },
            {"id": 2, "image_id": 1, "category_id": 7, "segmentation": _rle_encode(mask), "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": _rle_encode(crowd), "iscrowd": 1},
            {
                "id": 4,
                "image_id": 1,
                "category_id": 3,
                "segmentation": [[5, 45, 70, 45, 70, 55, 5, 55]],
                "iscrowd": 1,
            },
        ],
        "categories": [{"id": 3, "name": "cup"}, {"id": 7, "name": "saucer"}],
    }
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(coco))
    return path


def test_coco_standard_layout_loads_and_crowds_are_never_instances(tmp_path, photos):
    path = _standard_layout(tmp_path / "coco", photos)
    dataset, stats = load_segmentation_dataset(str(path))
    image, masks = to_instances(dataset[0], mask_format=stats.mask_format)
    assert image.shape == (60, 80, 3) and len(masks) == 2  # both crowd regions, RLE and polygon, left out
    assert dataset[0]["iscrowd"] == [0, 0, 1, 1] and dataset[0]["category_id"] == [3, 7, 3, 3]


def test_coco_image_root_and_a_missing_image_is_named(tmp_path, photos):
    from sam_hf.cli import main

    path = _standard_layout(tmp_path / "coco", photos)
    (tmp_path / "coco" / "val2017").rename(tmp_path / "pictures")
    with pytest.raises(FileNotFoundError, match=r"image '.*000001.jpg' of .* does not exist .*--image-root"):
        load_segmentation_dataset(str(path))
    dataset, _ = load_segmentation_dataset(str(path), image_root=str(tmp_path / "pictures"))
    assert len(dataset) == 1
    out = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--model",
        "sam-hf-tiny",
        "--dataset",
        str(path),
        "--prompt",
        "box",
        "--output",
        str(out),
    ]
    assert main([*args, "--image-root", str(tmp_path / "pictures")]) == 0
    assert json.loads(out.read_text())["num_images"] == 1
    finetune = ["finetune", "--model", "sam-hf-tiny", "--dataset", str(path), "--max-steps", "1"]
    finetune += ["--eval-split", "none", "--output-dir", str(tmp_path / "tuned")]
    assert main([*finetune, "--image-root", str(tmp_path / "pictures")]) == 0


def test_cli_evaluate_names_the_missing_image(tmp_path, photos, capsys):
    from sam_hf.cli import main

    path = _standard_layout(tmp_path / "coco", photos)
    (tmp_path / "coco" / "val2017" / "000001.jpg").unlink()
    for command in (
        ["evaluate", "--model", "sam-hf-tiny", "--dataset", str(path), "--prompt", "box"],
        ["finetune", "--model", "sam-hf-tiny", "--dataset", str(path), "--output-dir", str(tmp_path / "out")],
    ):
        assert main(command) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith(f"sam-hf {command[0]}: error: ")
        assert (
            "000001.jpg" in error[0] and "does not exist" in error[0] and "instances_val2017.json" in error[0]
        )


def test_rejects_unknown_format():
    with pytest.raises(ValueError, match="mask_format"):
        to_instances({"image": _image(), "label": _label_map()}, mask_format="png")


def test_mask_column_is_found_when_the_default_is_absent(tmp_path):
    rows = {"image": [Image.fromarray(_image())], "masks": [[_label_map() == 1, _label_map() == 4]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    dataset, stats = load_segmentation_dataset(str(tmp_path / "ds"))
    assert (stats.mask_column, stats.num_instances, stats.split) == ("masks", 2, None)
    _, masks = to_instances(dataset[0])  # the default column name resolves per row too
    assert masks.shape == (2, 24, 32)
    with pytest.raises(ValueError, match="mask_column 'labels' is not a column of the dataset; columns are"):
        load_segmentation_dataset(str(tmp_path / "ds"), mask_column="labels")
    datasets.Dataset.from_dict({"image": rows["image"], "other": [1]}).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(ValueError, match="none of the usual mask columns"):
        load_segmentation_dataset(str(tmp_path / "none"))


def test_no_usable_row_is_an_error_naming_the_reasons(tmp_path):
    rows = {
        "image": [Image.fromarray(_image(seed=i)) for i in range(3)],
        "label": [
            Image.fromarray(np.zeros((24, 32), np.uint8)),
            Image.fromarray(_label_map(20, 32)),
            Image.fromarray(np.zeros((24, 32), np.uint8)),
        ],
    }
    split = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(
        ValueError,
        match=r"split 'train'\) must have at least one usable row .* got 0 of 3: empty_mask: 2 \(first: row 0: "
        r".*size_mismatch: 1 \(first: row 1: a mask is \(20, 32\) but the image is \(24, 32\)\)",
    ):
        load_segmentation_dataset(str(tmp_path / "ds"))


def test_rows_without_masks_are_unusable_not_a_crash():
    with pytest.raises(ValueError, match="no non-empty instance"):
        to_instances({"image": _image(), "masks": []})


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, photos) -> str:
    """`annotate`'s output for three photos, one of them a phone JPEG with EXIF orientation 6."""
    from sam_hf import SamHFModel
    from sam_hf.inference.annotate import annotate

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(photos["astronaut"][::6, ::4]).save(folder / "astronaut.png")
    Image.fromarray(photos["coffee"][::5, ::5]).save(folder / "coffee.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    Image.fromarray(photos["chelsea"][::4, ::4]).save(folder / "phone.jpg", exif=exif)
    out = folder.parent / "annotated"
    model = SamHFModel.from_pretrained("sam-hf-tiny").eval()
    generator = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    annotate(folder, model, out, generator_kwargs=generator, show_progress=False)
    return str(out)


def test_reader_reads_annotate_output_without_flags(annotated, photos):
    rows = []
    for split in ("train", "test"):  # annotate splits by file name
        dataset, stats = load_segmentation_dataset(annotated, split)
        assert (stats.mask_column, stats.split) == ("masks", split)
        assert stats.num_usable == stats.num_rows == len(dataset) > 0
        rows += list(dataset)
    assert len(rows) == 3
    for row in rows:
        image, masks = to_instances(row)
        assert masks.shape[1:] == image.shape[:2] == (row["height"], row["width"])
    phone = next(row for row in rows if row["file_name"] == "phone.jpg")
    chelsea = photos["chelsea"][::4, ::4]
    assert (phone["height"], phone["width"]) == (chelsea.shape[1], chelsea.shape[0])  # stored upright


def test_cli_evaluate_reads_annotate_output(annotated, tmp_path, capsys):
    import json

    from sam_hf.cli import main

    output = tmp_path / "eval.json"
    args = ["evaluate", "--model", "sam-hf-tiny", "--dataset", annotated, "--prompt", "point,box"]
    assert main([*args, "--max-images", "1", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["split"] == "test" and results["num_images"] == 1
    assert results["runs"]["model"]["results"]["box"]["num_objects"] > 0


def test_finetune_reads_annotate_output_without_flags(annotated, tmp_path):
    from sam_hf.training.loop import FinetuneConfig, finetune

    config = FinetuneConfig(
        model="sam-hf-tiny",
        dataset=annotated,
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        lora_r=2,
        batch_size=1,
        merge=False,
    )
    summary = finetune(config)
    assert summary["steps"] == 1 and summary["stats"]["mask_column"] == "masks"


def test_finetune_on_a_split_without_usable_rows_says_so(tmp_path):
    from sam_hf.training.loop import FinetuneConfig, finetune

    rows = {"image": [Image.fromarray(_image(seed=i)) for i in range(2)], "label": [[], []]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    config = FinetuneConfig(
        model="sam-hf-tiny", dataset=str(tmp_path / "ds"), output_dir=str(tmp_path / "run")
    )
    with pytest.raises(ValueError, match="got 0 of 2: empty_mask: 2"):
        finetune(config)
