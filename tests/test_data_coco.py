"""COCO in and out (sam_hf.data.coco): categories, and the round trip of a COCO dataset through the loop, with
pycocotools as the oracle of every mask, area and box."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam_hf.data.coco import Categories, annotation_geometry
from sam_hf.data.rle import mask_to_rle


def test_categories_keep_ids_and_give_new_names_the_next_id():
    categories = Categories(
        [{"id": 3, "name": "cup", "supercategory": "tableware"}, {"id": 7, "name": "saucer"}]
    )
    assert (
        categories.id_for("saucer") == 7 and categories.id_for("spoon") == 8 and categories.id_for(None) == 9
    )
    assert categories.to_coco() == [
        {"id": 3, "name": "cup", "supercategory": "tableware"},
        {"id": 7, "name": "saucer"},
        {"id": 8, "name": "spoon"},
        {"id": 9, "name": "object"},
    ]
    with pytest.raises(ValueError, match="unique ids and names"):
        categories.add({"id": 3, "name": "mug"})


def test_a_one_pixel_object_has_a_one_pixel_box():
    from pycocotools import mask as mask_utils

    mask = np.zeros((5, 6), bool)
    mask[2, 4] = True
    geometry = annotation_geometry(mask_to_rle(mask))
    assert geometry["bbox"] == [4.0, 2.0, 1.0, 1.0] and geometry["area"] == 1
    encoded = {"size": [5, 6], "counts": geometry["segmentation"]["counts"].encode()}
    assert np.array_equal(mask_utils.decode(encoded).astype(bool), mask)


def _coco_dataset(root, photos):
    """COCO's layout with three categories (ids 2, 5, 9), polygons and RLEs, on three real photos."""
    from pycocotools import mask as mask_utils

    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id, name in enumerate(("astronaut", "coffee", "chelsea"), start=1):
        photo = photos[name][::4, ::4]
        height, width = photo.shape[:2]
        Image.fromarray(photo).save(root / "train2017" / f"{image_id:06d}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "height": height, "width": width})
        for category in (2, 5, 9):
            x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
            x1, y1 = x0 + rng.integers(8, width // 3), y0 + rng.integers(8, height // 3)
            if category == 9:  # an RLE
                mask = np.zeros((height, width), np.uint8)
                mask[y0:y1, x0:x1] = 1
                rle = mask_utils.encode(np.asfortranarray(mask))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:  # a triangle and a pentagon
                points = [x0, y0, x1, y0, (x0 + x1) / 2, y1] if category == 2 else [
                    x0, y0 + 3, (x0 + x1) / 2, y0, x1, y0 + 3, x1 - 2, y1, x0 + 2, y1
                ]  # fmt: skip
                segmentation = [[float(v) for v in points]]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                 "segmentation": segmentation, "iscrowd": 0}
            )  # fmt: skip
    categories = [{"id": 2, "name": "triangle"}, {"id": 5, "name": "pentagon"}, {"id": 9, "name": "box"}]
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.mark.slow
def test_coco_through_finetune_evaluate_and_label_keeps_every_category_box_and_area(tmp_path, photos):
    """COCO (3 categories, polygons and RLEs, standard layout) -> `sam-hf finetune` and `sam-hf evaluate` ->
    labelled with class names -> the written COCO file, checked against pycocotools."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from sam_hf.cli import main
    from sam_hf.data.sources import open_images
    from sam_hf.labeling import LabelSession

    source = _coco_dataset(tmp_path / "coco", photos)
    out = tmp_path / "finetuned"
    common = ["--dataset", str(source), "--eval-split", "none", "--output-dir", str(out)]
    assert main(["finetune", "--model", "sam-hf-tiny", *common, "--max-steps", "2", "--lora-r", "4"]) == 0
    results = tmp_path / "eval.json"
    args = [
        "evaluate",
        "--model",
        str(out),
        "--dataset",
        str(source),
        "--prompt",
        "box",
        "--output",
        str(results),
    ]
    assert main(args) == 0
    measured = json.loads(results.read_text())["runs"]["finetuned"]["results"]["box"]
    assert measured["num_objects"] == 9

    labels = tmp_path / "labels"
    with LabelSession(str(out), open_images(str(source)), labels, device="cpu") as session:
        assert [o.stage for o in session.objects] == ["imported"] * 3
        session.set_box(5, 5, 60, 60)
        session.accept(class_name="rocket")
        session.add_click(20, 90)
        session.accept(class_name="triangle")
    written = COCO(str(labels / "annotations.json"))
    original = COCO(str(source))
    names = {c["id"]: c["name"] for c in written.loadCats(written.getCatIds())}
    assert names == {2: "triangle", 5: "pentagon", 9: "box", 10: "rocket"}
    assert len(written.getAnnIds()) == len(original.getAnnIds()) + 2
    for annotation in written.loadAnns(written.getAnnIds()):
        rle = written.annToRLE(annotation)
        assert annotation["area"] == int(mask_utils.area(rle))
        assert annotation["bbox"] == mask_utils.toBbox(rle).tolist()
    image_ids = {image["file_name"]: image["id"] for image in written.loadImgs(written.getImgIds())}
    for annotation in original.loadAnns(original.getAnnIds()):  # imported masks are the original ones
        image_id = image_ids[original.loadImgs(annotation["image_id"])[0]["file_name"]]
        matches = [
            a for a in written.loadAnns(written.getAnnIds(imgIds=[image_id]))
            if a["stage"] == "imported" and a["category_id"] == annotation["category_id"]
        ]  # fmt: skip
        assert len(matches) == 1
        assert np.array_equal(written.annToMask(matches[0]), original.annToMask(annotation))
    new = [a for a in written.loadAnns(written.getAnnIds()) if a["stage"] != "imported"]
    assert sorted(names[a["category_id"]] for a in new) == ["rocket", "triangle"]
