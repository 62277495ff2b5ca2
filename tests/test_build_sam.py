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
from conftest import assert_bit_exact
from sam_hf import (
    SamHFConfig,
    SamHFModel,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
)
from sam_hf.build_sam import _build
from sam_hf.modeling.checkpoint_io import save_meta_checkpoint

# Scripts written as official-package users write them (the official README's two snippets, grown with what
# its predictor and automatic-mask-generator notebooks and scripts/amg.py do; BATCHED_SCRIPT below, the predictor
# notebook's batched section). Each reads MODEL_TYPE, CHECKPOINT and IMAGE (HxWx3 uint8 RGB), the generator
# script also OUTPUT_MODE, and fills `results`.
PREDICTOR_SCRIPT = """
import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry

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

"""

GENERATOR_SCRIPT = """
import json

import numpy as np
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

sam = sam_model_registry[MODEL_TYPE](checkpoint=CHECKPOINT)
_ = sam.to(device="cpu")
mask_generator = SamAutomaticMaskGenerator(
    model=sam, points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4, output_mode=OUTPUT_MODE
)
anns = mask_generator.generate(IMAGE)
sorted_anns = sorted(anns, key=(lambda x: x["area"]), reverse=True)
h, w = IMAGE.shape[:2]
overlay = np.zeros((h, w, 4))
outlines = np.zeros((h, w), dtype=np.uint8)
coco = []
for ann in sorted_anns:
    m = ann["segmentation"]
    if OUTPUT_MODE == "coco_rle":
        m = mask_utils.decode(m).astype(bool)
    overlay[m] = np.concatenate([np.random.random(3), [0.35]])
    x, y, bw, bh = ann["bbox"]
    outlines[y : y + bh, x : x + bw] += 1
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    coco.append((int(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()))
results["anns"], results["coco"], results["outlines"] = sorted_anns, coco, outlines
results["covered"] = overlay[..., 3] > 0
results["json"] = json.dumps([a if OUTPUT_MODE == "coco_rle" else {**a, "segmentation": None} for a in anns])
"""


# The predictor notebook's end-to-end batched inference: the model called on a list of images and prompts.
BATCHED_SCRIPT = """
import torch
from segment_anything import sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide

sam = sam_model_registry[MODEL_TYPE](checkpoint=CHECKPOINT)
sam.to(device="cpu")
h, w = IMAGE.shape[:2]
resize_transform = ResizeLongestSide(sam.image_encoder.img_size)


def prepare_image(image, transform, device):
    image = transform.apply_image(image)
    image = torch.as_tensor(image, device=device.device)
    return image.permute(2, 0, 1).contiguous()


image2 = IMAGE[: 3 * h // 4, : 2 * w // 3].copy()
h2, w2 = image2.shape[:2]
image2_boxes = torch.tensor([[0.1 * w2, 0.2 * h2, 0.6 * w2, 0.9 * h2], [0.5 * w2, 0.1 * h2, w2, 0.5 * h2]], device=sam.device)
image2_points = torch.tensor([[[0.3 * w2, 0.5 * h2], [0.8 * w2, 0.2 * h2]]], device=sam.device)
image_boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.95 * w, 0.9 * h]])
batched_input = [
    {
        "image": prepare_image(IMAGE, resize_transform, sam),
        "boxes": resize_transform.apply_boxes_torch(image_boxes, IMAGE.shape[:2]),
        "original_size": IMAGE.shape[:2],
    },
    {
        "image": prepare_image(image2, resize_transform, sam),
        "boxes": resize_transform.apply_boxes_torch(image2_boxes, image2.shape[:2]),
        "original_size": image2.shape[:2],
    },
]
first_output = sam(batched_input, multimask_output=False)
batched_input += [
    {
        "image": prepare_image(image2, resize_transform, sam),
        "point_coords": resize_transform.apply_coords_torch(image2_points, image2.shape[:2]),
        "point_labels": torch.tensor([[1, 0]], device=sam.device),
        "mask_inputs": first_output[1]["low_res_logits"][:1],
        "original_size": image2.shape[:2],
    },
]
batched_output = sam(batched_input, multimask_output=False)
results["batched_input"] = [{k: v.cpu().numpy() for k, v in output.items()} for output in batched_output]
results["batched_multimask"] = [{k: v.cpu().numpy() for k, v in o.items()} for o in sam(batched_input[2:], True)]
results["frame"] = (
    sam.pixel_mean.cpu().numpy(),
    sam.pixel_std.cpu().numpy(),
    sam.preprocess(batched_input[2]["image"]).cpu().numpy(),
    sam.postprocess_masks(batched_output[1]["low_res_logits"], batched_input[1]["image"].shape[-2:], (h2, w2)).cpu().numpy(),
)
"""


def run_script(script: str, package: str, **inputs) -> dict:
    """Run `script` with its imports from `segment_anything` (the package and `segment_anything.utils.transforms`)
    changed to import from `package`; returns its `results`."""
    if package != "segment_anything":
        assert script.count("from segment_anything") == script.count("segment_anything")
        script = script.replace("from segment_anything", f"from {package}")
    namespace = {"results": {}, **inputs}
    exec(compile(script, f"<official-style script, {package}>", "exec"), namespace)
    return namespace["results"]


def assert_same_predictions(official: dict, ours: dict, atol: float) -> None:
    """Same predictor outputs: floats within `atol` absolute; full-size box masks equal wherever the official
    logit is further than `atol` from the threshold, other masks equal on >= 99.99% of pixels; the transforms'
    outputs equal bit for bit."""
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


def assert_same_batched_outputs(official: dict, ours: dict, atol: float) -> None:
    """Same outputs of the model's batched call: floats within `atol` absolute, masks equal on >= 99.99% of
    pixels; the same `preprocess`, `postprocess_masks` and pixel statistics."""
    for case in ("batched_input", "batched_multimask"):
        assert len(ours[case]) == len(official[case]), case
        for output, o_output in zip(ours[case], official[case], strict=True):
            assert sorted(output) == sorted(o_output) == ["iou_predictions", "low_res_logits", "masks"], case
            for key, value in output.items():
                expected = o_output[key]
                assert value.shape == expected.shape and value.dtype == expected.dtype, (case, key)
                if value.dtype == bool:
                    assert (value == expected).mean() >= 0.9999, (case, key)
                else:
                    np.testing.assert_allclose(value, expected, atol=atol, rtol=0, err_msg=f"{case} {key}")
    for value, expected in zip(ours["frame"], official["frame"], strict=True):
        assert value.shape == expected.shape and value.dtype == expected.dtype
        np.testing.assert_allclose(value, expected, atol=atol, rtol=0)


def assert_same_records(official: dict, ours: dict, atol: float) -> None:
    """Same generator records: as many, with equal areas, XYWH int boxes, prompts and crop boxes (matched by
    area, box and prompt), scores within `atol`; the same drawing, COCO areas and boxes."""

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
    np.testing.assert_array_equal(ours["outlines"], official["outlines"])
    np.testing.assert_array_equal(ours["covered"], official["covered"])
    assert len(json.loads(ours["json"])) == len(official["anns"])


# ---------------------------------------------------------------------------------------------- the builders


def test_registry_keys_and_random_init_match_the_official_builders():
    import segment_anything

    assert sorted(sam_hf.sam_model_registry) == sorted(
        [*segment_anything.sam_model_registry, "vit_t", "vit_tiny"]
    )
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


def test_vit_t_is_mobile_sams_builder(official_vit_t, tmp_path):
    """`sam_model_registry["vit_t"]` as MobileSAM spells it: random init with MobileSAM's parameters, or its
    `mobile_sam.pt` (a plain state dict) loaded; a ViT-B builder names what such a file holds."""
    assert sam_hf.sam_model_registry["vit_t"] is build_sam_vit_t
    with torch.device("meta"):
        random = build_sam_vit_t()
    assert {k: tuple(v.shape) for k, v in random.state_dict().items()} == {
        k: tuple(v.shape) for k, v in official_vit_t.state_dict().items()
    }
    path = tmp_path / "mobile_sam.pt"
    torch.save(official_vit_t.state_dict(), path)
    loaded = sam_hf.sam_model_registry["vit_t"](checkpoint=path)
    assert isinstance(loaded, SamHFModel) and not loaded.training
    assert_bit_exact(loaded.state_dict(), official_vit_t.state_dict())
    with pytest.raises(
        ValueError,
        match=r"does not hold a vit_b model: vision_config.encoder_type='tiny_vit' \(expected 'vit'\).*"
        r"It holds a vit_t model: use sam_model_registry\['vit_t'\]",
    ):
        sam_hf.sam_model_registry["vit_b"](checkpoint=path)


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


def test_a_checkpoint_of_another_size_or_type_raises(shipped_pth):
    with pytest.raises(
        ValueError,
        match=r"does not hold a vit_b model: vision_config.image_size=128 \(expected 1024\).*"
        r"It holds no SAM ViT-B/L/H, MobileSAM, SAM-HQ or Light HQ-SAM model",
    ):
        sam_hf.sam_model_registry["vit_b"](checkpoint=shipped_pth)
    with pytest.raises(
        TypeError, match="checkpoint must be a path, a Hub id, a shipped model name or None, got int"
    ):
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
        match=r"'sam_vit_l_0b3195.pth' \(official checkpoint file /ckpt/sam_vit_l_0b3195.pth\) does not hold a vit_h model: "
        r"vision_config.hidden_size=1024 \(expected 1280\); vision_config.num_hidden_layers=24 \(expected 32\).*"
        r"It holds a vit_l model: use sam_model_registry\['vit_l'\]",
    ):
        sam_hf.sam_model_registry["default"](checkpoint="sam_vit_l_0b3195.pth")


# ------------------------------------------------------------------------------- the official script, run twice


@pytest.fixture(scope="module")
def small_photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((150, 100)))  # (100, 150, 3): non-square


@pytest.fixture
def tiny_registries(monkeypatch):
    """Both registries get a "vit_tiny" entry for the shipped sam-hf-tiny's architecture, which neither builds: the
    official one builds its `Sam` as `tests/test_amg.official_sam`; ours is the builders' own code (`_build`)."""
    import segment_anything

    from test_amg import official_sam

    def official_builder(checkpoint=None):
        sam = official_sam(SamHFConfig.from_preset("sam_hf_tiny"))
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
        return sam

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_tiny", official_builder)
    monkeypatch.setitem(sam_hf.sam_model_registry, "vit_tiny", partial(_build, "sam_hf_tiny"))


def test_official_predictor_script_runs_with_one_import_changed_tiny(
    tiny_registries, shipped_pth, small_photo
):
    """The shipped sam-hf-tiny's weights as a Meta `.pth`; tolerance 1e-4 absolute."""
    inputs = {"MODEL_TYPE": "vit_tiny", "CHECKPOINT": shipped_pth, "IMAGE": small_photo}
    official = run_script(PREDICTOR_SCRIPT, "segment_anything", **inputs)
    assert_same_predictions(official, run_script(PREDICTOR_SCRIPT, "sam_hf", **inputs), atol=1e-4)


def test_official_batched_script_runs_with_one_import_changed_tiny(tiny_registries, shipped_pth, small_photo):
    """The shipped sam-hf-tiny's weights as a Meta `.pth`; tolerance 1e-4 absolute. (Not on ViT-B: the code path is
    the same, and its six ViT-B encoder passes per package took minutes here.)"""
    inputs = {"MODEL_TYPE": "vit_tiny", "CHECKPOINT": shipped_pth, "IMAGE": small_photo}
    official = run_script(BATCHED_SCRIPT, "segment_anything", **inputs)
    assert_same_batched_outputs(official, run_script(BATCHED_SCRIPT, "sam_hf", **inputs), atol=1e-4)


@pytest.mark.parametrize("output_mode", ["binary_mask", "coco_rle"])
def test_official_generator_script_runs_with_one_import_changed_tiny(
    tiny_registries, shipped_pth, small_photo, output_mode
):
    """The shipped sam-hf-tiny's weights as a Meta `.pth`; scores within 1e-4 absolute."""
    inputs = {
        "MODEL_TYPE": "vit_tiny",
        "CHECKPOINT": shipped_pth,
        "IMAGE": small_photo,
        "OUTPUT_MODE": output_mode,
    }
    official = run_script(GENERATOR_SCRIPT, "segment_anything", **inputs)
    ours = run_script(GENERATOR_SCRIPT, "sam_hf", **inputs)
    assert {type(ann["segmentation"]) for ann in ours["anns"]} == {
        dict if output_mode == "coco_rle" else np.ndarray
    }
    assert_same_records(official, ours, atol=1e-4)


def test_vit_b_pth_loads_as_the_official_builder_loads_it(official_vit_b, tmp_path):
    """`sam_model_registry["vit_b"](checkpoint=...)` on a Meta-format ViT-B file: the official builder's weights."""
    import segment_anything

    checkpoint = tmp_path / "sam_vit_b_random.pth"
    save_meta_checkpoint(official_vit_b.state_dict(), checkpoint)
    ours = sam_hf.sam_model_registry["vit_b"](checkpoint=str(checkpoint))
    expected = segment_anything.sam_model_registry["vit_b"](checkpoint=str(checkpoint)).state_dict()
    assert isinstance(ours, SamHFModel) and not ours.training and ours.image_encoder.img_size == 1024
    state = ours.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.slow
def test_official_predictor_script_runs_with_one_import_changed_vit_b(official_vit_b, small_photo, tmp_path):
    """The predictor script through both packages' real `sam_model_registry["vit_b"]` on a seeded random ViT-B
    written as a Meta `.pth`; tolerance 1e-4 absolute. (The generator on ViT-B: `test_amg`'s ViT-B parity.)"""
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    save_meta_checkpoint(official_vit_b.state_dict(), checkpoint)
    inputs = {"MODEL_TYPE": "vit_b", "CHECKPOINT": str(checkpoint), "IMAGE": small_photo}
    official = run_script(PREDICTOR_SCRIPT, "segment_anything", **inputs)
    assert_same_predictions(official, run_script(PREDICTOR_SCRIPT, "sam_hf", **inputs), atol=1e-4)


def test_apply_image_torch_resizes_height_and_width_as_apply_image(small_photo):
    """`ResizeLongestSide.apply_image_torch` sizes by `(H, W)` of a `(B, C, H, W)` batch; the official one sizes by
    `(B, C)` (facebookresearch/segment-anything#218), so it is compared with `apply_image`, which it approximates:
    within 1 grey level of 255 (0.994 measured on this photo: PIL rounds to uint8, torch antialiases in float)."""
    from sam_hf.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(128)
    expected = transform.apply_image(small_photo)
    batch = torch.tensor(small_photo).permute(2, 0, 1)[None].float()
    resized = transform.apply_image_torch(batch)
    assert resized.shape == (1, 3, *expected.shape[:2])
    np.testing.assert_allclose(resized[0].permute(1, 2, 0).numpy(), expected, atol=1.0, rtol=0)
    with pytest.raises(ValueError, match=r"image must be a \(B, C, H, W\) float tensor, got \(100, 150, 3\)"):
        transform.apply_image_torch(torch.tensor(small_photo))


def test_batched_input_without_its_required_keys_raises(tiny_model):
    image = torch.zeros(3, 32, 32)
    with pytest.raises(
        ValueError,
        match=r"batched_input\[1\] must be a dict with 'image' and 'original_size'.*"
        r"got no \['original_size'\]",
    ):
        tiny_model([{"image": image, "original_size": (32, 32)}, {"image": image}], multimask_output=False)
    with pytest.raises(
        ValueError, match=r"x must be a \(3, h, w\) RGB image tensor, got shape \(1, 3, 32, 32\)"
    ):
        tiny_model([{"image": image[None], "original_size": (32, 32)}], multimask_output=False)


def test_predictor_binarises_at_the_models_mask_threshold(tiny_model, photos):
    """As the official predictor: `masks = logits > model.mask_threshold`, also when a user changes it."""
    predictor = sam_hf.SamPredictor(tiny_model)
    predictor.set_image(photos["chelsea"])
    box = np.array([50, 40, 300, 250])
    logits = predictor.predict(box=box, return_logits=True)[0]
    tiny_model.mask_threshold = float(np.median(logits))
    masks = predictor.predict(box=box)[0]
    np.testing.assert_array_equal(masks, logits > tiny_model.mask_threshold)
    assert 0.3 < masks.mean() < 0.7


# ---------------------------------------------------------------------------------------------------- SAM-HQ

# Written as segment_anything_hq's README and demo scripts use it: a checkpoint file, the predictor with and
# without `hq_token_only`, the automatic mask generator. Reads MODEL_TYPE, CHECKPOINT and IMAGE. `sam.eval()`
# after loading: segment_anything_hq's TinyViT caches its attention biases when put in eval mode, which its
# builder does before loading the checkpoint.
HQ_SCRIPT = """
import numpy as np
from segment_anything_hq import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry

sam = sam_model_registry[MODEL_TYPE](checkpoint=CHECKPOINT)
sam.to(device="cpu")
sam.eval()
predictor = SamPredictor(sam)
predictor.set_image(IMAGE)
h, w = IMAGE.shape[:2]
input_point, input_label = np.array([[0.45 * w, 0.4 * h]]), np.array([1])
results["point"] = predictor.predict(
    point_coords=input_point, point_labels=input_label, multimask_output=False, hq_token_only=False
)
results["point_multimask_hq_only"] = predictor.predict(
    point_coords=input_point, point_labels=input_label, multimask_output=True, hq_token_only=True
)
input_box = np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.9 * h])
results["box_hq_only"] = predictor.predict(box=input_box[None, :], multimask_output=False, hq_token_only=True)
mask_generator = SamAutomaticMaskGenerator(model=sam, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
results["anns"] = mask_generator.generate(IMAGE)
"""


def test_vit_tiny_is_light_hq_sam_and_vit_b_builds_sam_hq_from_its_file(official_hq_vit_b, tmp_path):
    """`sam_model_registry["vit_tiny"]` builds Light HQ-SAM as segment_anything_hq spells it (MobileSAM's
    `vit_t` stays MobileSAM); `["vit_b"]` given a `sam_hq_vit_b.pth` builds SAM-HQ with its weights, bit for bit;
    `["vit_t"]` given a Light HQ-SAM file names the builder that takes it."""
    from segment_anything_hq import sam_model_registry as hq_registry

    with torch.device("meta"):
        light = sam_hf.sam_model_registry["vit_tiny"]()
        mobile = sam_hf.sam_model_registry["vit_t"]()
    official_light = hq_registry["vit_tiny"]()  # on the CPU: its TinyViT builder reads drop-path values
    assert {k: tuple(v.shape) for k, v in light.state_dict().items()} == {
        k: tuple(v.shape) for k, v in official_light.state_dict().items()
    }
    assert mobile.config.mask_decoder_config.decoder_type == "sam"
    path = tmp_path / "sam_hq_vit_b.pth"
    torch.save(official_hq_vit_b.state_dict(), path)
    loaded = sam_hf.sam_model_registry["vit_b"](checkpoint=str(path))
    assert loaded.config.mask_decoder_config.decoder_type == "hq" and not loaded.training
    assert_bit_exact(loaded.state_dict(), official_hq_vit_b.state_dict())
    with pytest.raises(ValueError, match=r"It holds a vit_b model: use sam_model_registry\['vit_b'\]"):
        sam_hf.sam_model_registry["vit_l"](checkpoint=str(path))


@pytest.mark.slow
def test_official_sam_hq_script_runs_with_one_import_changed(official_hq_vit_tiny, small_photo, tmp_path):
    """A segment_anything_hq script on a seeded random Light HQ-SAM written as `sam_hq_vit_tiny.pth`: predictor
    logits and scores within 1e-4 absolute, masks equal on >= 99.99% of pixels; the generator's masks
    identical, its scores within 1e-4 (thresholds open: random weights predict low IoU)."""
    checkpoint = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(official_hq_vit_tiny.state_dict(), checkpoint)
    inputs = {"MODEL_TYPE": "vit_tiny", "CHECKPOINT": str(checkpoint), "IMAGE": small_photo}
    script = HQ_SCRIPT
    official = run_script(script, "segment_anything", **inputs)  # the script's own import
    assert script.count("from segment_anything_hq") == script.count("segment_anything")
    ours = run_script(script.replace("from segment_anything_hq", "from segment_anything"), "sam_hf", **inputs)
    for case in ("point", "point_multimask_hq_only", "box_hq_only"):
        (masks, scores, low), (o_masks, o_scores, o_low) = ours[case], official[case]
        assert masks.shape == o_masks.shape == (1, *small_photo.shape[:2]), case
        assert (masks == o_masks).mean() >= 0.9999, case
        np.testing.assert_allclose(low, o_low, atol=1e-4, rtol=0, err_msg=case)
        np.testing.assert_allclose(scores, o_scores, atol=1e-4, rtol=0, err_msg=case)

    def by_mask(anns):
        return sorted(anns, key=lambda a: (a["area"], a["bbox"], a["point_coords"]))

    anns, o_anns = by_mask(ours["anns"]), by_mask(official["anns"])
    assert len(anns) == len(o_anns) > 0
    for ann, o_ann in zip(anns, o_anns, strict=True):
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert ann[key] == o_ann[key], key
        np.testing.assert_array_equal(ann["segmentation"], o_ann["segmentation"])
        for key in ("predicted_iou", "stability_score"):
            assert abs(ann[key] - o_ann[key]) <= 1e-4, key
