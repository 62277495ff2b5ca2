"""SamAutomaticMaskGenerator: parity with the official generator (tiny SAM with the same weights for every
option, seeded ViT-B on a real photo for the defaults), output modes, options, errors and edge cases."""

from __future__ import annotations

import resource
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from sam_hf import SamAutomaticMaskGenerator, SamHFConfig, SamHFModel, SamPredictor
from sam_hf.inference.amg_utils import build_point_grid, generate_crop_boxes

RECORD_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


def official_sam(config: SamHFConfig):
    """The official `Sam` with the architecture of `config` (load our state dict into it strictly)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    vision, prompt, decoder = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    grid = vision.image_size // vision.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=vision.image_size,
            patch_size=vision.patch_size,
            embed_dim=vision.hidden_size,
            depth=vision.num_hidden_layers,
            num_heads=vision.num_attention_heads,
            mlp_ratio=vision.mlp_ratio,
            out_chans=vision.output_channels,
            qkv_bias=vision.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=vision.layer_norm_eps),
            use_rel_pos=vision.use_rel_pos,
            window_size=vision.window_size,
            global_attn_indexes=vision.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt.hidden_size,
            image_embedding_size=(grid, grid),
            input_image_size=(vision.image_size, vision.image_size),
            mask_in_chans=prompt.mask_input_channels,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=decoder.hidden_size,
            transformer=TwoWayTransformer(
                depth=decoder.num_hidden_layers,
                embedding_dim=decoder.hidden_size,
                num_heads=decoder.num_attention_heads,
                mlp_dim=decoder.mlp_dim,
                attention_downsample_rate=decoder.attention_downsample_rate,
            ),
            num_multimask_outputs=decoder.num_multimask_outputs,
            iou_head_depth=decoder.iou_head_depth,
            iou_head_hidden_dim=decoder.iou_head_hidden_dim,
        ),
    ).eval()


@pytest.fixture(scope="module")
def tiny_pair():
    """(official Sam, SamHFModel) with the same seeded tiny weights."""
    from conftest import randomize_positional_terms

    torch.manual_seed(0)
    ours = SamHFModel(SamHFConfig.from_preset("tiny")).eval()
    randomize_positional_terms(ours)
    # Random decoder heads give logits of ~0.3 (stability ~0) and IoU 0 +- 0.16: scale the masks and centre the
    # IoU at 0.5 so that both thresholds bite.
    with torch.no_grad():
        for mlp in ours.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
        ours.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(0.5)
    official = official_sam(ours.config)
    official.load_state_dict(ours.state_dict(), strict=True)
    return official, ours


@pytest.fixture(scope="module")
def shipped_pair():
    """(official Sam, SamHFModel) with the weights of the shipped sam-hf-tiny."""
    ours = SamHFModel.from_pretrained("sam-hf-tiny").eval()
    official = official_sam(ours.config)
    official.load_state_dict(ours.state_dict(), strict=True)
    return official, ours


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((96, 72)))


def _stack(records: list[dict]) -> np.ndarray:
    return np.stack([r["segmentation"] for r in records]).reshape(len(records), -1).astype(np.float64)


def assert_same_masks(
    official: list[dict], ours: list[dict], min_iou: float = 0.99, atol: float = 1e-3
) -> None:
    """One-to-one match by mask IoU (>= min_iou); scores within atol, prompts and crop boxes equal."""
    assert len(ours) == len(official)
    if not official:
        return
    a, b = _stack(official), _stack(ours)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
    # Prefer the pair with the same prompt among equal masks (duplicates are common with random weights).
    same_prompt = np.array([[o["point_coords"] == n["point_coords"] for n in ours] for o in official])
    match = np.argmax(iou + same_prompt, axis=1)
    assert len(set(match.tolist())) == len(official), "masks are not matched one-to-one"
    assert iou[np.arange(len(official)), match].min() >= min_iou
    for o, j in zip(official, match, strict=True):
        n = ours[j]
        assert abs(o["predicted_iou"] - n["predicted_iou"]) <= atol
        assert np.isclose(o["stability_score"], n["stability_score"], atol=atol, equal_nan=True)
        np.testing.assert_allclose(n["point_coords"], o["point_coords"], atol=1e-6)
        assert n["crop_box"] == o["crop_box"]


def _pair_generate(tiny_pair, image, **kwargs):
    from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator

    official, ours = tiny_pair
    return OfficialGenerator(official, **kwargs).generate(image), SamAutomaticMaskGenerator(
        ours, **kwargs
    ).generate(image)


OPENED = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**OPENED, "box_nms_thresh": 1.0},
        {**OPENED, "box_nms_thresh": 0.5},
        {"pred_iou_thresh": 0.49, "stability_score_thresh": 0.91, "box_nms_thresh": 0.95},
        {**OPENED, "crop_n_layers": 1},
        {**OPENED, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2, "crop_overlap_ratio": 0.2},
        {**OPENED, "box_nms_thresh": 1.0, "points_per_batch": 7},
        {},
    ],
    ids=["opened", "nms", "thresholds", "crops", "crops2-downscale", "odd-batch", "defaults"],
)
def test_matches_official_tiny(tiny_pair, photo, kwargs):
    official, ours = _pair_generate(tiny_pair, photo, points_per_side=8, **kwargs)
    assert_same_masks(official, ours)
    assert kwargs == {} or len(ours) > 0
    if kwargs.get("box_nms_thresh") == 1.0:
        assert len(ours) == 3 * 64


@pytest.mark.parametrize(
    "kwargs", [{}, {"points_per_side": 8, "points_per_batch": 8}], ids=["defaults", "small-batches"]
)
def test_later_prompt_batch_keeps_a_mask_when_the_first_keeps_none(shipped_pair, kwargs):
    """A red rectangle on grey: the first prompt batches (top rows of the grid) keep no mask, a later one
    does. The official generator returns one mask here; so must this one, the same."""
    image = np.full((128, 128, 3), 40, np.uint8)
    image[80:120, 30:90] = (255, 0, 0)
    official, ours = _pair_generate(shipped_pair, image, **kwargs)
    assert len(official) == 1
    assert_same_masks(official, ours)


def test_predictor_attribute_like_official(tiny_pair, photo):
    """`mask_generator.predictor` is a SamPredictor on the same model, usable the official way."""
    from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator
    from segment_anything import SamPredictor as OfficialPredictor

    from sam_hf import SamPredictor

    official = OfficialGenerator(tiny_pair[0], points_per_side=2)
    generator = SamAutomaticMaskGenerator(tiny_pair[1], points_per_side=2)
    assert isinstance(official.predictor, OfficialPredictor) and isinstance(generator.predictor, SamPredictor)
    assert generator.predictor.model is tiny_pair[1] and generator.model is generator.predictor.model
    for gen in (official, generator):
        gen.predictor.set_image(photo)
    point = {"point_coords": np.array([[40.0, 30.0]]), "point_labels": np.array([1])}
    masks, scores, low_res = generator.predictor.predict(**point)
    official_masks, official_scores, _ = official.predictor.predict(**point)
    assert masks.shape == (3, 72, 96) and scores.shape == (3,) and low_res.shape == (3, 32, 32)
    np.testing.assert_allclose(scores, official_scores, atol=1e-4)


def test_explicit_point_grids_match_official(tiny_pair, photo):
    grids = [np.random.default_rng(0).random((20, 2)), build_point_grid(3)]
    official, ours = _pair_generate(
        tiny_pair, photo, points_per_side=None, point_grids=grids, crop_n_layers=1, **OPENED
    )
    assert_same_masks(official, ours)


def test_given_image_features_replace_the_whole_image_encoding(tiny_pair, photo, monkeypatch):
    """`generate(image, image_features)` with a predictor's features of the image gives the masks of
    `generate(image)`; only the smaller crops are encoded (crop_n_layers=1: 4 of 5 crops)."""
    _, ours = tiny_pair
    generator = SamAutomaticMaskGenerator(ours, points_per_side=4, crop_n_layers=1, **OPENED)
    expected = generator.generate(photo)
    predictor = SamPredictor(ours)
    predictor.set_image(photo)
    encoded = []
    encode = ours.get_image_features
    monkeypatch.setattr(ours, "get_image_features", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    assert_same_masks(expected, generator.generate(photo, image_features=predictor.image_features), atol=1e-6)
    assert len(encoded) == 4
    with pytest.raises(ValueError, match=r"image_features\['image_embeddings'\] must have shape \(1, "):
        generator.generate(photo, image_features={"image_embeddings": predictor.get_image_embedding()[0]})
    with pytest.raises(ValueError, match=r"multimask_output must be a bool .*got dict.*image_features="):
        generator.generate(photo, predictor.image_features)  # segment_anything_hq's second argument
    with pytest.raises(ValueError, match=r"image_features must be a dict of \['image_embeddings'\]"):
        generator.generate(photo, image_features=predictor.get_image_embedding())


def test_records_and_output_modes(tiny_pair, photo):
    from pycocotools import mask as mask_utils

    model = tiny_pair[1]
    kwargs = {**OPENED, "points_per_side": 4, "crop_n_layers": 1}
    binary = SamAutomaticMaskGenerator(model, **kwargs).generate(photo)
    uncompressed = SamAutomaticMaskGenerator(model, output_mode="uncompressed_rle", **kwargs).generate(photo)
    coco = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **kwargs).generate(photo)
    assert len(binary) == len(uncompressed) == len(coco) > 0
    crop_boxes = [
        [x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in generate_crop_boxes((72, 96), 1, 512 / 1500)[0]
    ]
    for b, u, c in zip(binary, uncompressed, coco, strict=True):
        assert set(b) == RECORD_KEYS
        mask = b["segmentation"]
        assert mask.shape == (72, 96) and mask.dtype == bool
        assert b["area"] == int(mask.sum()) and isinstance(b["area"], int)
        ys, xs = np.nonzero(mask)
        assert b["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert b["crop_box"] in crop_boxes
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2
        assert u["segmentation"]["size"] == [72, 96]
        assert sum(u["segmentation"]["counts"]) == 72 * 96
        decoded_u = mask_utils.decode(mask_utils.frPyObjects(u["segmentation"], 72, 96)).astype(bool)
        np.testing.assert_array_equal(decoded_u, mask)
        assert isinstance(c["segmentation"]["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(c["segmentation"]).astype(bool), mask)


def test_min_mask_region_area_removes_small_holes_and_islands(tiny_pair, photo):
    from skimage.measure import label

    model = tiny_pair[1]
    plain = SamAutomaticMaskGenerator(model, points_per_side=6, **OPENED, box_nms_thresh=1.0).generate(photo)
    cleaned = SamAutomaticMaskGenerator(
        model, points_per_side=6, **OPENED, box_nms_thresh=1.0, min_mask_region_area=30
    ).generate(photo)
    assert 0 < len(cleaned) <= len(plain)
    for record in cleaned:
        mask = record["segmentation"]
        islands = np.bincount(label(mask, connectivity=2).ravel())[1:]
        holes = np.bincount(label(~mask, connectivity=2).ravel())[1:]
        assert len(islands) == 1 or islands.min() >= 30
        assert len(holes) == 0 or holes.min() >= 30
        ys, xs = np.nonzero(mask)
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    changed = sum(
        not np.array_equal(a["segmentation"], b["segmentation"]) for a, b in zip(plain, cleaned, strict=False)
    )
    assert changed > 0, "the option should change some masks of this random model"


def test_blank_image_and_all_filtered_return_empty(tiny_pair, photo):
    model = tiny_pair[1]
    assert SamAutomaticMaskGenerator(model, points_per_side=4).generate(np.zeros((40, 50, 3), np.uint8)) == []
    assert SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=1.0).generate(photo) == []
    assert SamAutomaticMaskGenerator(model, points_per_side=4, crop_n_layers=1).generate(photo) == []


def test_large_image_runs_with_bounded_memory(tiny_pair):
    model = tiny_pair[1]
    image = np.random.default_rng(0).integers(0, 256, (4000, 6000, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    records = SamAutomaticMaskGenerator(
        model, points_per_side=2, points_per_batch=4, **OPENED, output_mode="coco_rle"
    ).generate(image)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(records) > 0 and records[0]["segmentation"]["size"] == [4000, 6000]
    # 12 full-resolution float masks alone would be 1.1 GiB; chunking keeps a few 96 MiB masks at most.
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB"


def test_bf16_precision_agrees_with_fp32(tiny_pair, photo):
    """bf16 (native decoder copy, bf16 upsampling) gives the fp32 masks up to boundary pixels: every fp32
    mask has a bf16 mask from the same prompt with IoU >= 0.9, and scores agree to bf16 precision."""
    kwargs = {"points_per_side": 4, **OPENED, "box_nms_thresh": 1.0}
    fp32 = SamAutomaticMaskGenerator(tiny_pair[1], **kwargs).generate(photo)
    bf16 = SamAutomaticMaskGenerator(tiny_pair[1], precision="bf16", **kwargs).generate(photo)
    assert len(bf16) == len(fp32) == 3 * 16 and bf16[0]["segmentation"].shape == (72, 96)
    assert tiny_pair[1].mask_decoder.iou_token.weight.dtype == torch.float32  # the model is not cast
    for record in fp32:
        same_prompt = [r for r in bf16 if r["point_coords"] == record["point_coords"]]
        a = record["segmentation"]
        ious = [(a & r["segmentation"]).sum() / max((a | r["segmentation"]).sum(), 1) for r in same_prompt]
        best = same_prompt[int(np.argmax(ious))]
        assert max(ious) >= 0.9
        assert abs(best["predicted_iou"] - record["predicted_iou"]) <= 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"point_grids": [np.array([[0.5, 1.2]])], "points_per_side": None}, r"point_grids\[0\].*\[0, 1\]"),
        ({"point_grids": [np.array([[-0.1, 0.5]])], "points_per_side": None}, r"\[0, 1\]"),
        ({"point_grids": [np.zeros((4, 3))], "points_per_side": None}, r"\(num_points, 2\)"),
        ({"point_grids": [build_point_grid(2)]}, "exactly one of points_per_side or point_grids"),
        ({"points_per_side": None}, "exactly one of points_per_side or point_grids"),
        (
            {"point_grids": [build_point_grid(2)], "points_per_side": None, "crop_n_layers": 1},
            "one grid per crop",
        ),
        ({"output_mode": "png"}, "output_mode must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"points_per_side": 0}, "points_per_side"),
    ],
)
def test_bad_arguments_raise(tiny_pair, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamAutomaticMaskGenerator(tiny_pair[1], **kwargs)


def test_bad_image_raises(tiny_pair):
    generator = SamAutomaticMaskGenerator(tiny_pair[1], points_per_side=2)
    # Images are read by sam_hf.data.images.to_rgb: what it refuses, the generator refuses.
    with pytest.raises(ValueError, match=r"image must be .* got shape \(3, 10, 10\) \(channels-first"):
        generator.generate(np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"float image and must hold finite values in \[0, 1\]"):
        generator.generate(np.full((10, 10, 3), 255.0, np.float32))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [{**OPENED, "box_nms_thresh": 1.0}, {}, {**OPENED, "crop_n_layers": 1}],
    ids=["opened", "defaults", "crops"],
)
def test_matches_official_vit_b_on_a_photo(official_vit_b, photos, kwargs):
    """Seeded random ViT-B weights, a real photo at 256x171, 8x8 grid. Tolerances: each matched pair of
    masks has IoU >= 0.99, predicted IoU and stability score within 1e-3."""
    from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator

    model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    model.load_state_dict(official_vit_b.state_dict(), strict=True)
    image = np.asarray(Image.fromarray(photos["coffee"]).resize((256, 171)))
    official = OfficialGenerator(official_vit_b, points_per_side=8, **kwargs).generate(image)
    ours = SamAutomaticMaskGenerator(model, points_per_side=8, **kwargs).generate(image)
    assert_same_masks(official, ours)
    if kwargs.get("box_nms_thresh") == 1.0:
        assert len(ours) == 3 * 64


def test_bf16_precision_leaves_the_model_float32(tiny_pair, photo):
    """precision="bf16" works on copies: the caller's model stays float32, and a float32 generator built
    afterwards on it gives the float32 results of a generator that never saw bf16."""
    model = tiny_pair[1]
    kwargs = {"points_per_side": 3, **OPENED, "box_nms_thresh": 1.0}
    before = SamAutomaticMaskGenerator(model, **kwargs).generate(photo)
    SamAutomaticMaskGenerator(model, precision="bf16", **kwargs).generate(photo)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    after = SamAutomaticMaskGenerator(model, **kwargs).generate(photo)
    assert [r["predicted_iou"] for r in after] == [r["predicted_iou"] for r in before]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])


def test_generate_leaves_the_c_allocator_alone(tiny_pair, photo, monkeypatch):
    """No process-wide allocator setting: generate() never calls glibc's mallopt."""
    import ctypes

    calls = []
    real_cdll = ctypes.CDLL

    class RecordingCDLL:
        def __init__(self, name, *args, **kwargs):
            self._lib = real_cdll(name, *args, **kwargs)

        def __getattr__(self, attr):
            calls.append(attr)
            return getattr(self._lib, attr)

    monkeypatch.setattr(ctypes, "CDLL", RecordingCDLL)
    SamAutomaticMaskGenerator(tiny_pair[1], points_per_side=2).generate(photo)
    assert "mallopt" not in calls


def test_follows_a_peft_adapter(shipped_pair):
    """A PEFT model (unmerged LoRA with non-zero B) gives the masks of the same adapter merged."""
    import copy

    from sam_hf.training.lora import apply_lora

    torch.manual_seed(2)
    peft_model = apply_lora(
        copy.deepcopy(shipped_pair[1]), r=4, init_lora_weights=False, verbose=False
    ).eval()
    merged = copy.deepcopy(peft_model).merge_and_unload()
    image = np.full((128, 128, 3), 40, np.uint8)
    image[80:120, 30:90] = (255, 0, 0)
    image[10:50, 20:60] = (0, 0, 255)
    kwargs = {"points_per_side": 6, **OPENED, "box_nms_thresh": 1.0}
    adapted = SamAutomaticMaskGenerator(peft_model, **kwargs).generate(image)
    expected = SamAutomaticMaskGenerator(merged, **kwargs).generate(image)
    base = SamAutomaticMaskGenerator(shipped_pair[1], **kwargs).generate(image)
    assert len(adapted) == len(expected) == 3 * 36
    np.testing.assert_allclose(
        [r["predicted_iou"] for r in adapted], [r["predicted_iou"] for r in expected], atol=1e-4
    )
    assert (
        max(abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(adapted, base, strict=True)) > 0.01
    )
    for a, b in zip(adapted, expected, strict=True):
        assert a["point_coords"] == b["point_coords"]
        inter = (a["segmentation"] & b["segmentation"]).sum()
        assert inter >= 0.99 * (a["segmentation"] | b["segmentation"]).sum()


@pytest.mark.slow
def test_matches_mobile_sam_generator_on_a_photo(official_vit_t, photos):
    """MobileSAM with seeded perturbed weights, a real photo at 256x171, 8x8 grid, thresholds open, fp32: each
    mask of mobile_sam's generator is matched one-to-one with ours at IoU >= 0.999 (a logit within float noise
    of the threshold may flip a pixel), predicted IoU and stability score within 1e-3."""
    from mobile_sam import SamAutomaticMaskGenerator as MobileSamGenerator

    model = SamHFModel(SamHFConfig.from_preset("vit_t")).eval()
    model.load_state_dict(official_vit_t.state_dict(), strict=True)
    image = np.asarray(Image.fromarray(photos["coffee"]).resize((256, 171)))
    kwargs = {"points_per_side": 8, **OPENED, "box_nms_thresh": 1.0}
    official = MobileSamGenerator(official_vit_t, **kwargs).generate(image)
    ours = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
    assert len(ours) == 3 * 64
    assert_same_masks(official, ours, min_iou=0.999)


@pytest.mark.slow
@pytest.mark.parametrize(("hq_token_only", "multimask_output"), [(False, True), (True, True), (False, False)])
def test_matches_segment_anything_hq_generator_on_a_photo(
    official_hq_vit_tiny, photos, hq_token_only, multimask_output
):
    """Light HQ-SAM with seeded perturbed weights, as the MobileSAM case: one mask per point (SAM's best
    multimask output, or its single-mask output, plus the HQ mask), each of segment_anything_hq's generator's
    masks matched one-to-one with ours at IoU >= 0.999; `generate(image, multimask_output)` as the official
    generator takes it. The official generator has no `hq_token_only`: with it, ours is compared with the
    official generator over a predictor whose decoder call gets it."""
    from segment_anything_hq import SamAutomaticMaskGenerator as HQGenerator

    model = SamHFModel(SamHFConfig.from_preset("sam_hq_vit_tiny")).eval()
    model.load_state_dict(official_hq_vit_tiny.state_dict(), strict=True)
    image = np.asarray(Image.fromarray(photos["coffee"]).resize((256, 171)))
    kwargs = {"points_per_side": 8, **OPENED, "box_nms_thresh": 1.0}
    official_generator = HQGenerator(official_hq_vit_tiny, **kwargs)
    predict_torch = official_generator.predictor.predict_torch
    official_generator.predictor.predict_torch = partial(predict_torch, hq_token_only=hq_token_only)
    official = official_generator.generate(image, multimask_output)
    ours = SamAutomaticMaskGenerator(model, hq_token_only=hq_token_only, **kwargs).generate(
        image, multimask_output
    )
    assert len(ours) == 64
    assert_same_masks(official, ours, min_iou=0.999)
