"""The official API by one import: `sam_model_registry` / `build_sam*`, and a script written against the official
package that gives the same outputs when only its import line changes to `from sam_hf import ...`."""

from __future__ import annotations

import importlib
import json
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

import sam_hf
from sam_hf import SamHFConfig, SamHFModel, build_sam, build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from sam_hf.build_sam import _build
from sam_hf.modeling.checkpoint_io import save_meta_checkpoint

OFFICIAL_IMPORT = "from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry"

# Written as official-package users write it (README, predictor and automatic-mask-generator notebooks,
# scripts/amg.py); reads MODEL_TYPE, CHECKPOINT, IMAGE (HxWx3 uint8 RGB) and OUTPUT_MODE, fills `results`.
OFFICIAL_SCRIPT = f"""
import numpy as np
import torch
from pycocotools import mask as mask_utils
{OFFICIAL_IMPORT}

device = "cuda" if torch.cuda.is_available() else "cpu"
sam = sam_model_registry[MODEL_TYPE](checkpoint=CHECKPOINT)
sam.to(device=device)
sam.eval()
results["model"] = (sam.image_encoder.img_size, str(sam.device), sam.mask_threshold, sam.image_format)

predictor = SamPredictor(sam)
predictor.set_image(IMAGE)
h, w = IMAGE.shape[:2]
results["image"] = (predictor.is_image_set, predictor.original_size, predictor.input_size,
                    predictor.model.image_encoder.img_size, tuple(predictor.features.shape))
results["embedding"] = predictor.get_image_embedding().cpu().numpy()

input_point = np.array([[0.45 * w, 0.4 * h]])
input_label = np.array([1])
masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
results["point"] = (masks, scores, logits)
mask_input = logits[np.argmax(scores), :, :]
input_points = np.array([[0.45 * w, 0.4 * h], [0.7 * w, 0.75 * h]])
masks, scores, logits = predictor.predict(
    point_coords=input_points, point_labels=np.array([1, 0]), mask_input=mask_input[None, :, :], multimask_output=False
)
results["points_and_mask"] = (masks, scores, logits)
input_box = np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h])
results["box"] = predictor.predict(point_coords=None, point_labels=None, box=input_box[None, :], multimask_output=False)
results["box_and_point"] = predictor.predict(
    point_coords=np.array([[0.3 * w, 0.6 * h]]), point_labels=np.array([0]), box=input_box, multimask_output=False
)
results["box_logits"] = predictor.predict(box=input_box, multimask_output=False, return_logits=True)

input_boxes = torch.tensor(
    [[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.95 * w, 0.9 * h], [0, 0, w, h]], device=predictor.device
)
transformed_boxes = predictor.transform.apply_boxes_torch(input_boxes, IMAGE.shape[:2])
masks, scores, low_res = predictor.predict_torch(
    point_coords=None, point_labels=None, boxes=transformed_boxes, multimask_output=False
)
results["batched_boxes"] = (masks.cpu().numpy(), scores.cpu().numpy(), low_res.cpu().numpy())
coords = predictor.transform.apply_coords_torch(torch.as_tensor(input_points, device=device)[None], IMAGE.shape[:2])
masks, scores, _ = predictor.predict_torch(coords, torch.tensor([[1, 0]], device=device), multimask_output=True)
results["batched_points"] = (masks.cpu().numpy(), scores.cpu().numpy())
results["transform"] = (
    predictor.transform.apply_coords(np.concatenate([input_point, [[0.0, 0.0]]])[None], IMAGE.shape[:2]),
    predictor.transform.apply_boxes(input_box, IMAGE.shape[:2]),
    predictor.transform.apply_image(IMAGE),
)
predictor.reset_image()
results["reset"] = (predictor.is_image_set, predictor.features)

mask_generator = SamAutomaticMaskGenerator(
    model=sam, points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4, output_mode=OUTPUT_MODE
)
anns = mask_generator.generate(IMAGE)
sorted_anns = sorted(anns, key=(lambda x: x["area"]), reverse=True)
overlay = np.zeros((h, w, 4))
outlines = np.zeros((h, w), dtype=np.uint8)
for ann in sorted_anns:
    m = ann["segmentation"]
    if OUTPUT_MODE == "coco_rle":
        m = mask_utils.decode(m).astype(bool)
    overlay[m] = np.concatenate([np.random.default_rng(len(results)).random(3), [0.35]])
    x, y, bw, bh = ann["bbox"]
    outlines[y : y + bh, x : x + bw] += 1
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    results.setdefault("coco", []).append((int(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()))
results["anns"] = sorted_anns
results["overlay"] = (overlay, outlines)
results["json"] = json.dumps([{{k: v for k, v in a.items() if k != "segmentation" or OUTPUT_MODE == "coco_rle"}} for a in anns])
"""


def run_script(package: str, **inputs) -> dict:
    """Run `OFFICIAL_SCRIPT` importing from `package` ("segment_anything" or "sam_hf"); returns its `results`."""
    script = OFFICIAL_SCRIPT.replace("from segment_anything import", f"from {package} import")
    assert script.count(f"from {package} import") == 1
    namespace = {"json": json, "results": {}, **inputs}
    exec(compile(script, f"<official script, {package}>", "exec"), namespace)
    return namespace["results"]


def sharpen_heads(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random decoder heads give logits near 0 and IoU near 0 (nothing passes the generator's filters): scale the
    hypernetworks' last layers and centre the IoU head at 0.5, on a copy."""
    state_dict = {k: v.clone() for k, v in state_dict.items()}
    for key in state_dict:
        if key.startswith("mask_decoder.output_hypernetworks_mlps.") and key.endswith("layers.2.weight"):
            state_dict[key] *= 300
    state_dict["mask_decoder.iou_prediction_head.layers.2.bias"].fill_(0.5)
    return state_dict


def assert_same_results(official: dict, ours: dict, atol: float) -> None:
    """Same outputs: floats within `atol` absolute; full-size box masks equal wherever the official logit is
    further than `atol` from the threshold; other masks equal on >= 99.99% of pixels; generator records equal in
    number, area, box, prompt and crop box, scores within `atol`; the same drawing and COCO areas and boxes."""
    assert ours["model"] == official["model"]
    assert ours["image"] == official["image"]
    np.testing.assert_allclose(ours["embedding"], official["embedding"], atol=atol, rtol=0)
    for case in ("point", "points_and_mask", "box", "box_and_point"):
        (masks, scores, low), (o_masks, o_scores, o_low) = ours[case], official[case]
        assert masks.dtype == o_masks.dtype == bool and masks.shape == o_masks.shape, case
        assert (masks == o_masks).mean() >= 0.9999, case
        np.testing.assert_allclose(low, o_low, atol=atol, rtol=0, err_msg=case)
        np.testing.assert_allclose(scores, o_scores, atol=atol, rtol=0, err_msg=case)
    logits, o_logits = ours["box_logits"][0], official["box_logits"][0]
    assert logits.dtype == o_logits.dtype == np.float32
    np.testing.assert_allclose(logits, o_logits, atol=atol, rtol=0)
    clear = np.abs(o_logits) > atol
    assert clear.mean() > 0.99 and (ours["box"][0][clear] == official["box"][0][clear]).all()
    for case in ("batched_boxes", "batched_points"):
        for value, expected in zip(ours[case], official[case], strict=True):
            assert value.shape == expected.shape and value.dtype == expected.dtype, case
            if value.dtype == bool:
                assert (value == expected).mean() >= 0.9999, case
            else:
                np.testing.assert_allclose(value, expected, atol=atol, rtol=0, err_msg=case)
    for value, expected in zip(ours["transform"], official["transform"], strict=True):
        assert value.dtype == expected.dtype
        np.testing.assert_array_equal(value, expected)
    assert ours["reset"] == official["reset"] == (False, None)

    def by_mask(anns):
        return sorted(anns, key=lambda a: (a["area"], a["bbox"], a["point_coords"]))

    anns, o_anns = by_mask(ours["anns"]), by_mask(official["anns"])
    assert len(anns) == len(o_anns) > 0
    for ann, o_ann in zip(anns, o_anns, strict=True):
        assert sorted(ann) == sorted(o_ann)
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert ann[key] == o_ann[key], key
        assert type(ann["area"]) is type(o_ann["area"]) is int
        assert all(type(v) is int for v in ann["bbox"] + ann["crop_box"])
        for key in ("predicted_iou", "stability_score"):
            assert type(ann[key]) is float and abs(ann[key] - o_ann[key]) <= atol, key
    assert sorted(ours["coco"]) == sorted(official["coco"])
    np.testing.assert_array_equal(ours["overlay"][1], official["overlay"][1])
    assert len(json.loads(ours["json"])) == len(official["anns"])


# ---------------------------------------------------------------------------------------------- the builders


def test_registry_keys_and_random_init_match_the_official_builders():
    import segment_anything

    assert sorted(sam_hf.sam_model_registry) == sorted(segment_anything.sam_model_registry)
    assert sam_hf.sam_model_registry["default"] is build_sam is build_sam_vit_h
    builders = {"vit_b": build_sam_vit_b, "vit_l": build_sam_vit_l, "vit_h": build_sam_vit_h}
    for name, builder in builders.items():
        assert sam_hf.sam_model_registry[name] is builder
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            ours, official = builder(), segment_anything.sam_model_registry[name]()
        assert isinstance(ours, SamHFModel) and not ours.training
        assert ours.config.to_dict() == SamHFConfig.from_preset(name).to_dict()
        shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        official_shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
        assert shapes == official_shapes, name


@pytest.fixture(scope="module")
def shipped_pth(tmp_path_factory) -> str:
    """The shipped sam-hf-tiny's weights as a Meta-format .pth (the form official builders load)."""
    path = tmp_path_factory.mktemp("meta") / "sam_hf_tiny.pth"
    save_meta_checkpoint(SamHFModel.from_pretrained("sam-hf-tiny").state_dict(), path)
    return str(path)


def test_a_checkpoint_in_any_form_loads_through_the_resolver(shipped_pth, tmp_path):
    """`.pth`, shipped name, sam_hf and transformers folders all give the same float32 weights in eval mode."""
    from sam_hf.modeling.checkpoint_io import save_transformers_checkpoint

    reference = SamHFModel.from_pretrained("sam-hf-tiny")
    reference.save_pretrained(tmp_path / "sam_hf")
    save_transformers_checkpoint(reference.config, reference.state_dict(), tmp_path / "transformers")
    expected = reference.state_dict()
    for checkpoint in (shipped_pth, "sam-hf-tiny", tmp_path / "sam_hf", str(tmp_path / "transformers")):
        model = _build("sam_hf_tiny", checkpoint)
        assert isinstance(model, SamHFModel) and not model.training
        state = model.state_dict()
        assert sorted(state) == sorted(expected)
        assert all(torch.equal(state[k], v) and state[k].dtype == torch.float32 for k, v in expected.items())


def test_a_checkpoint_of_another_size_or_type_raises(shipped_pth, monkeypatch):
    with pytest.raises(
        ValueError,
        match=r"does not hold a vit_b model: vision_config.image_size=128 \(expected 1024\).*"
        r"It holds no SAM ViT-B/L/H model",
    ):
        sam_hf.sam_model_registry["vit_b"](checkpoint=shipped_pth)
    with pytest.raises(TypeError, match="checkpoint must be a path, a Hub id, a shipped model name or None, got int"):
        build_sam_vit_b(checkpoint=3)
    with pytest.raises(ValueError, match="no local file or folder"):
        build_sam_vit_b(checkpoint="no/such/dir/x.pth")


def test_a_checkpoint_of_another_sam_size_names_its_size(monkeypatch):
    """What the resolver loaded from a ViT-L file (shapes only, on the meta device) asked for as ViT-H."""
    from sam_hf.hub import ResolvedModel

    build_sam_module = importlib.import_module("sam_hf.build_sam")  # `sam_hf.build_sam` is the function

    with torch.device("meta"):
        vit_l = SamHFModel(SamHFConfig.from_preset("vit_l"))
    loaded = ResolvedModel("meta", "/ckpt/sam_vit_l_0b3195.pth", "/ckpt/sam_vit_l_0b3195.pth")
    monkeypatch.setattr(build_sam_module, "load_model", lambda *args, **kwargs: (vit_l, None, loaded))
    with pytest.raises(
        ValueError,
        match=r"'sam_vit_l_0b3195.pth' \(Meta checkpoint /ckpt/sam_vit_l_0b3195.pth\) does not hold a vit_h model: "
        r"vision_config.hidden_size=1024 \(expected 1280\); vision_config.num_hidden_layers=24 \(expected 32\).*"
        r"It holds a vit_l model: use sam_model_registry\['vit_l'\]",
    ):
        sam_hf.sam_model_registry["default"](checkpoint="sam_vit_l_0b3195.pth")


# ------------------------------------------------------------------------------- the official script, run twice


@pytest.fixture(scope="module")
def small_photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((150, 100)))  # (100, 150, 3): non-square


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle"])
def test_official_script_runs_with_one_import_changed_tiny(shipped_pth, small_photo, monkeypatch, output_mode):
    """The script on the shipped sam-hf-tiny weights as a `.pth`: the registries cannot build that size, so both
    get a "vit_tiny" entry for it (the official one builds its `Sam` as `tests/test_amg.official_sam`; ours is
    the builders' own code for the `sam_hf_tiny` preset). Tolerance 1e-4 absolute."""
    import segment_anything
    from test_amg import official_sam

    def official_builder(checkpoint=None):
        sam = official_sam(SamHFConfig.from_preset("sam_hf_tiny"))
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
        return sam

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_tiny", official_builder)
    monkeypatch.setitem(sam_hf.sam_model_registry, "vit_tiny", partial(_build, "sam_hf_tiny"))
    inputs = {"MODEL_TYPE": "vit_tiny", "CHECKPOINT": shipped_pth, "IMAGE": small_photo, "OUTPUT_MODE": output_mode}
    official = run_script("segment_anything", **inputs)
    ours = run_script("sam_hf", **inputs)
    assert all(isinstance(ann["segmentation"], dict) for ann in ours["anns"]) == (output_mode == "coco_rle")
    assert_same_results(official, ours, atol=1e-4)
