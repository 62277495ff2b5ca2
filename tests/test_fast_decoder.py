"""`modeling.fast_decoder.decode_point_prompts` computes what the model's decoder computes: on a plain model,
on a PEFT model with unmerged and merged LoRA adapters, and with `modules_to_save` copies. Tolerance: mask
logits and IoU predictions within 1e-4 of `model(...)` (float32)."""

from __future__ import annotations

import pytest
import torch

from sam_hf import SamHFConfig, SamHFModel
from sam_hf.modeling.fast_decoder import decode_point_prompts
from sam_hf.training.lora import apply_lora


def _model(name: str) -> SamHFModel:
    if name == "sam-hf-tiny":
        return SamHFModel.from_pretrained("sam-hf-tiny").eval()
    from conftest import randomize_positional_terms

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset(name)).eval()
    randomize_positional_terms(model)
    return model


def _inputs(model: SamHFModel, num_prompts: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    config = model.config
    grid = config.vision_config.image_size // config.vision_config.patch_size
    embeddings = torch.randn(1, config.mask_decoder_config.hidden_size, grid, grid, generator=generator)
    points = torch.rand(num_prompts, 2, generator=generator) * config.vision_config.image_size
    return embeddings, points


def _plain_decoder(
    model, embeddings: torch.Tensor, points: torch.Tensor, multimask_output: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own forward (a PEFT model's forward for a wrapped one): `(P, M, 4h, 4w)`, `(P, M)`."""
    labels = torch.ones(1, len(points), 1, dtype=torch.long)
    outputs = model(
        image_embeddings=embeddings,
        input_points=points[None, :, None],
        input_labels=labels,
        multimask_output=multimask_output,
    )
    return outputs.pred_masks[0], outputs.iou_scores[0]


def _fast(
    model, embeddings: torch.Tensor, points: torch.Tensor, multimask_output: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    return decode_point_prompts(
        model.prompt_encoder,
        model.mask_decoder,
        {"image_embeddings": embeddings},
        points,
        multimask_output=multimask_output,
    )


def _assert_close(actual: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor]):
    assert actual[0].shape == expected[0].shape and actual[1].shape == expected[1].shape
    torch.testing.assert_close(actual[0], expected[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-4, rtol=0)


def _lora(model: SamHFModel, **kwargs):
    """LoRA on every attention projection of the decoder with random (non-zero) A and B."""
    torch.manual_seed(2)
    peft_model = apply_lora(model, r=4, init_lora_weights=False, verbose=False, **kwargs)
    return peft_model.eval()


@pytest.mark.parametrize("name", ["tiny", "sam-hf-tiny"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_equals_model_forward(name, multimask_output):
    model = _model(name)
    embeddings, points = _inputs(model)
    with torch.inference_mode():
        masks, iou = _fast(model, embeddings, points, multimask_output)
        _assert_close((masks, iou), _plain_decoder(model, embeddings, points, multimask_output))
    grid, num_masks = embeddings.shape[-1], 3 if multimask_output else 1
    assert masks.shape == (10, num_masks, 4 * grid, 4 * grid) and iou.shape == (10, num_masks)


@pytest.mark.parametrize("name", ["tiny", "sam-hf-tiny"])
def test_follows_an_unmerged_lora_adapter(name):
    """The adapter changes the decoder's logits by far more than the tolerance, and the fast path follows it."""
    base = _model(name)
    embeddings, points = _inputs(base)
    with torch.inference_mode():
        base_out = _plain_decoder(base, embeddings, points)
    peft_model = _lora(base)
    assert peft_model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.merged is False
    with torch.inference_mode():
        adapted = _plain_decoder(peft_model, embeddings, points)
        fast = _fast(peft_model, embeddings, points)
    assert (adapted[0] - base_out[0]).abs().max() > 0.1
    _assert_close(fast, adapted)


def test_follows_a_merged_adapter():
    peft_model = _lora(_model("sam-hf-tiny"))
    embeddings, points = _inputs(peft_model)
    with torch.inference_mode():
        adapted = _plain_decoder(peft_model, embeddings, points)
        peft_model.merge_adapter()
        _assert_close(_fast(peft_model, embeddings, points), adapted)
        merged = peft_model.merge_and_unload()
        assert isinstance(merged, SamHFModel)
        _assert_close(_fast(merged, embeddings, points), adapted)


def test_follows_modules_to_save():
    """Fully trained copies of the upscaling and the IoU head (PEFT `modules_to_save`) are the ones used."""
    peft_model = _lora(_model("tiny"), modules_to_save=["output_upscaling", "iou_prediction_head"])
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(0.5 * torch.randn_like(parameter))
    embeddings, points = _inputs(peft_model)
    with torch.inference_mode():
        _assert_close(_fast(peft_model, embeddings, points), _plain_decoder(peft_model, embeddings, points))


def test_chunks_share_the_first_layer_and_equal_one_pass():
    """Chunks of any size, one prompt per chunk included (a per-prompt batch of 1 must not be taken for the
    shared image tokens), give what one pass over all prompts gives."""
    model = _model("sam-hf-tiny")
    embeddings, points = _inputs(model, num_prompts=7)
    with torch.no_grad():
        whole = _fast(model, embeddings, points)
        for chunk_size in (1, 3, 7):
            chunked = decode_point_prompts(
                model.prompt_encoder,
                model.mask_decoder,
                {"image_embeddings": embeddings},
                points,
                chunk_size=chunk_size,
            )
            _assert_close(chunked, whole)
        _assert_close(whole, _plain_decoder(model, embeddings, points))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        decode_point_prompts(
            model.prompt_encoder, model.mask_decoder, {"image_embeddings": embeddings}, points, chunk_size=0
        )


def test_a_hooked_upscaling_convolution_is_called_as_a_module():
    """The upscaling's matrix-product form reads the convolution weights; a hook on a convolution (as any
    wrapper) must make the decoder call the module instead, with the same result."""
    model = _model("sam-hf-tiny")
    embeddings, points = _inputs(model, num_prompts=4)
    calls = []
    with torch.no_grad():
        expected = _fast(model, embeddings, points)
        handle = model.mask_decoder.output_upscaling[0].register_forward_hook(lambda *args: calls.append(1))
        hooked = _fast(model, embeddings, points)
        handle.remove()
    assert calls, "the hooked convolution was not called"
    _assert_close(hooked, expected)


def _hq_case(name: str, num_prompts: int = 6):
    """An HQ model with seeded weights, its features of a random image and `num_prompts` points."""
    model = _model(name)
    generator = torch.Generator().manual_seed(3)
    size = model.config.image_size
    with torch.inference_mode():
        features = model.get_image_features(torch.randn(1, 3, size, size, generator=generator))
    return model, features, torch.rand(num_prompts, 2, generator=generator) * size


def _plain_hq(model, features, points, hq_token_only: bool, multimask_output: bool = True):
    labels = torch.ones(1, len(points), 1, dtype=torch.long)
    outputs = model(
        **features,
        input_points=points[None, :, None],
        input_labels=labels,
        hq_token_only=hq_token_only,
        multimask_output=multimask_output,
    )
    return outputs.pred_masks[0], outputs.iou_scores[0]


@pytest.mark.parametrize("name", ["tiny_hq", "tiny_vit_t_hq"])
@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_hq_decoder_head_equals_model_forward(name, hq_token_only, multimask_output):
    """SAM-HQ's head (the best multimask output, or the single-mask output, plus the HQ mask, or the HQ mask
    alone) on the re-associated transformer gives the model's own outputs, one mask per prompt, in chunks
    too."""
    model, features, points = _hq_case(name)
    with torch.inference_mode():
        expected = _plain_hq(model, features, points, hq_token_only, multimask_output)
        for chunk_size in (None, 4):
            fast = decode_point_prompts(
                model.prompt_encoder,
                model.mask_decoder,
                features,
                points,
                chunk_size,
                hq_token_only,
                multimask_output,
            )
            _assert_close(fast, expected)
    grid = model.config.image_embedding_size
    assert expected[0].shape == (6, 1, 4 * grid, 4 * grid) and expected[1].shape == (6, 1)


def test_hq_decoder_head_follows_an_unmerged_lora_adapter():
    model, features, points = _hq_case("tiny_hq")
    with torch.inference_mode():
        base = _plain_hq(model, features, points, False)
    peft_model = _lora(model)
    with torch.inference_mode():
        adapted = _plain_hq(peft_model, features, points, False)
        fast = decode_point_prompts(peft_model.prompt_encoder, peft_model.mask_decoder, features, points)
    assert (adapted[0] - base[0]).abs().max() > 0.1
    _assert_close(fast, adapted)


def test_sam_decoder_head_refuses_hq_token_only():
    model = _model("tiny")
    embeddings, points = _inputs(model)
    with pytest.raises(ValueError, match="hq_token_only=True needs SAM-HQ's mask decoder"):
        decode_point_prompts(
            model.prompt_encoder, model.mask_decoder, {"image_embeddings": embeddings}, points, None, True
        )
