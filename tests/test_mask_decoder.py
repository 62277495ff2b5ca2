"""Mask decoders by `decoder_type`: SAM-HQ's decoder (`MaskDecoderHQ`) against the official `segment_anything_hq`
on a real photo, for SAM-HQ ViT-B and Light HQ-SAM (TinyViT), with `hq_token_only` either way; SAM's decoder
refuses the HQ option."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from sam_hf import SamHFConfig, SamHFModel, SamPredictor
from sam_hf.modeling.mask_decoder import MaskDecoder, MaskDecoderHQ

# fp32 on the same weights: low-res logits and IoU predictions agree to this, absolute.
ATOL = 1e-4


def _predictor_pair(official, preset: str, photo: np.ndarray):
    """(segment_anything_hq's SamPredictor, ours) on the same weights, with `photo` set."""
    from segment_anything_hq import SamPredictor as OfficialPredictor

    model = SamHFModel(SamHFConfig.from_preset(preset)).eval()
    model.load_state_dict(official.state_dict(), strict=True)
    pair = OfficialPredictor(official), SamPredictor(model)
    for predictor in pair:
        predictor.set_image(photo)
    return pair


def _assert_predictions_match(official, ours) -> None:
    height, width = official.original_size
    box = np.array([0.2 * width, 0.15 * height, 0.8 * width, 0.9 * height])
    points = np.array([[0.5 * width, 0.4 * height], [0.3 * width, 0.7 * height]])
    cases = [
        {"point_coords": points[:1], "point_labels": np.array([1])},
        {"point_coords": points, "point_labels": np.array([1, 0]), "multimask_output": False},
        {"box": box, "multimask_output": False},
    ]
    for case in cases:
        for hq_token_only in (False, True):
            official_masks, official_scores, official_low = official.predict(
                **case, hq_token_only=hq_token_only
            )
            masks, scores, low = ours.predict(**case, hq_token_only=hq_token_only)
            assert low.shape == official_low.shape == (1, 256, 256)
            np.testing.assert_allclose(low, official_low, atol=ATOL, rtol=0)
            np.testing.assert_allclose(scores, official_scores, atol=ATOL, rtol=0)
            official_logits = official.predict(**case, hq_token_only=hq_token_only, return_logits=True)[0]
            clear = np.abs(official_logits) > 1e-3
            assert (masks[clear] == official_masks[clear]).all()


@pytest.mark.parametrize("preset", ["sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny"])
def test_hq_presets_have_segment_anything_hq_parameter_names(preset):
    from segment_anything_hq import sam_model_registry

    official = sam_model_registry[preset.removeprefix("sam_hq_")]
    model = SamHFModel(SamHFConfig.from_preset(preset))
    assert type(model.mask_decoder) is MaskDecoderHQ
    # The ViTs are built without memory; TinyViT's builder reads values (its drop-path rates), and is small.
    with torch.device("meta") if "tiny" not in preset else contextlib.nullcontext():
        expected = {k: tuple(v.shape) for k, v in official().state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_light_hq_sam_matches_segment_anything_hq(official_hq_vit_tiny, photos):
    official, ours = _predictor_pair(official_hq_vit_tiny, "sam_hq_vit_tiny", photos["astronaut"])
    torch.testing.assert_close(ours.features, official.features, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        ours.image_features["intermediate_embeddings"], official.interm_features[0], atol=ATOL, rtol=0
    )
    _assert_predictions_match(official, ours)


@pytest.mark.slow
def test_sam_hq_vit_b_matches_segment_anything_hq(official_hq_vit_b, photos):
    official, ours = _predictor_pair(official_hq_vit_b, "sam_hq_vit_b", photos["astronaut"])
    torch.testing.assert_close(ours.features, official.features, atol=ATOL, rtol=0)
    _assert_predictions_match(official, ours)


def test_official_batched_call_takes_hq_token_only(official_hq_vit_tiny, photos):
    """`model(batched_input, multimask_output, hq_token_only=...)` as the official HQ `Sam.forward`."""
    from segment_anything_hq.utils.transforms import ResizeLongestSide

    model = SamHFModel(SamHFConfig.from_preset("sam_hq_vit_tiny")).eval()
    model.load_state_dict(official_hq_vit_tiny.state_dict(), strict=True)
    image = photos["chelsea"]
    resized = torch.as_tensor(ResizeLongestSide(1024).apply_image(image)).permute(2, 0, 1).contiguous()
    batch = [
        {"image": resized, "original_size": image.shape[:2], "boxes": torch.tensor([[100.0, 80, 700, 600]])}
    ]
    for hq_token_only in (False, True):
        with torch.no_grad():
            expected = official_hq_vit_tiny(batch, False, hq_token_only=hq_token_only)[0]
        got = model(batch, False, hq_token_only=hq_token_only)[0]
        torch.testing.assert_close(got["low_res_logits"], expected["low_res_logits"], atol=ATOL, rtol=0)
        torch.testing.assert_close(got["iou_predictions"], expected["iou_predictions"], atol=ATOL, rtol=0)


def test_hq_model_caches_its_early_feature_and_needs_it():
    model = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    assert model.image_feature_names == ("image_embeddings", "intermediate_embeddings")
    features = model.get_image_features(torch.randn(2, 3, 128, 128))
    assert features["image_embeddings"].shape == (2, 32, 8, 8)
    assert features["intermediate_embeddings"].shape == (2, 8, 8, 32)  # the first global block's output
    points, labels = torch.rand(2, 3, 1, 2) * 128, torch.ones(2, 3, 1)
    output = model(**features, input_points=points, input_labels=labels)
    assert output.pred_masks.shape == (2, 3, 1, 32, 32) and output.iou_scores.shape == (2, 3, 1)
    torch.testing.assert_close(output.intermediate_embeddings, features["intermediate_embeddings"])
    with pytest.raises(
        ValueError,
        match=r"takes the image features \['image_embeddings', 'intermediate_embeddings'\].*missing \['intermediate_embeddings'\]",
    ):
        model(image_embeddings=features["image_embeddings"], input_points=points, input_labels=labels)


def test_sam_decoder_refuses_hq_token_only_and_the_early_feature(tiny_model, photos):
    assert type(tiny_model.mask_decoder) is MaskDecoder
    predictor = SamPredictor(tiny_model)
    predictor.set_image(photos["coffee"])
    with pytest.raises(ValueError, match="hq_token_only=True needs SAM-HQ's mask decoder"):
        predictor.predict(np.array([[10, 10]]), np.array([1]), hq_token_only=True)
    with pytest.raises(ValueError, match=r"\['intermediate_embeddings'\] given, which it does not take"):
        tiny_model(
            image_embeddings=predictor.features,
            intermediate_embeddings=torch.zeros(1, 8, 8, 32),
            input_points=torch.zeros(1, 1, 1, 2),
            input_labels=torch.ones(1, 1, 1),
        )


@pytest.mark.parametrize("preset", ["tiny", "tiny_hq"])
def test_single_mask_choice_as_a_tensor_gives_select_outputs_answer(preset):
    """`select_single_mask` (the traced graphs' choice, `multimask` a tensor) gives what `select_outputs` gives:
    for SAM-HQ its one mask either way, for SAM the single-mask output or the best-scored multimask output;
    `all_outputs` gives every SAM head (SAM-HQ: each plus its HQ mask)."""
    torch.manual_seed(0)
    decoder = SamHFModel(SamHFConfig.from_preset(preset)).mask_decoder
    generator = torch.Generator().manual_seed(0)
    heads = decoder.num_mask_tokens + (preset == "tiny_hq")
    masks = torch.randn(3, heads, 8, 8, generator=generator)
    iou_pred = torch.randn(3, decoder.num_mask_tokens, generator=generator)
    hq_options = [False, True] if preset == "tiny_hq" else [False]
    for multimask in (False, True):
        for hq_token_only in hq_options:
            chosen, iou = decoder.select_single_mask(
                masks, iou_pred, torch.tensor(float(multimask)), hq_token_only
            )
            expected, expected_iou = decoder.select_outputs(masks, iou_pred, multimask, hq_token_only)
            if preset == "tiny" and multimask:
                best = expected_iou.argmax(dim=1)
                expected, expected_iou = (
                    expected[torch.arange(3), best][:, None],
                    expected_iou.max(1, keepdim=True)[0],
                )
            assert chosen.shape == (3, 1, 8, 8) and iou.shape == (3, 1)
            assert torch.equal(chosen, expected) and torch.equal(iou, expected_iou)
    all_masks, all_iou = decoder.all_outputs(masks, iou_pred)
    assert all_masks.shape == (3, decoder.num_mask_tokens, 8, 8) and torch.equal(all_iou, iou_pred)
    sam_heads = masks[:, : decoder.num_mask_tokens]
    assert torch.equal(all_masks, sam_heads + masks[:, -1:] if preset == "tiny_hq" else sam_heads)
