"""Tests for sam_hf.data.reader: sources, mask formats and counting of unusable rows."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from sam_hf.data.reader import decode_rle, load_segmentation_dataset, to_instances


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


def test_decode_compressed_rle_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = np.asfortranarray((np.random.default_rng(0).random((37, 41)) < 0.4).astype(np.uint8))
    encoded = mask_utils.encode(mask)
    np.testing.assert_array_equal(decode_rle(encoded), mask.astype(bool))


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
    for i in range(2):
        Image.fromarray(_image(seed=i)).save(tmp_path / f"{i}.png")
    square = [[3.0, 2.0, 11.0, 2.0, 11.0, 9.0, 3.0, 9.0]]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 24, "width": 32} for i in range(2)],
        "annotations": [
            {"id": 1, "image_id": 0, "segmentation": square, "iscrowd": 0},
            {"id": 2, "image_id": 0, "segmentation": _rle_encode(_label_map() == 4), "iscrowd": 1},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    dataset, stats = load_segmentation_dataset(str(tmp_path / "coco.json"))
    assert (stats.num_rows, stats.num_usable, dict(stats.unusable)) == (2, 1, {"empty_mask": 1})
    _, masks = to_instances(dataset[0], mask_format=stats.mask_format)
    assert masks.shape == (2, 24, 32)
    np.testing.assert_array_equal(masks[0], _label_map() == 1)  # polygon with inclusive corners
    np.testing.assert_array_equal(masks[1], _label_map() == 4)


def test_rejects_unknown_format():
    with pytest.raises(ValueError, match="mask_format"):
        to_instances({"image": _image(), "label": _label_map()}, mask_format="png")
