import pytest
import torch

from sam_hf import SamHFConfig, SamHFModel


def test_forward_shapes_tiny(tiny_model, tiny_config):
    pixel_values = torch.randn(2, 3, 128, 128)
    out = tiny_model(
        pixel_values=pixel_values,
        input_points=torch.rand(2, 3, 2, 2) * 128,
        input_labels=torch.ones(2, 3, 2, dtype=torch.long),
    )
    assert out.loss is None
    assert out.pred_masks.shape == (2, 3, 3, tiny_config.mask_size, tiny_config.mask_size)
    assert out.iou_scores.shape == (2, 3, 3)
    assert out.image_embeddings.shape == (2, 32, 8, 8)
    single = tiny_model(
        image_embeddings=out.image_embeddings,
        input_boxes=torch.tensor([[[0.0, 0, 50, 60]]] * 2),
        multimask_output=False,
    )
    assert single.pred_masks.shape == (2, 1, 1, 32, 32)


def test_padding_tokens_do_not_change_results(tiny_model):
    emb = tiny_model.get_image_embeddings(torch.randn(1, 3, 128, 128))
    points = torch.tensor([[[[10.0, 20.0], [70.0, 40.0]]]])
    labels = torch.tensor([[[1, 0]]])
    ref = tiny_model(image_embeddings=emb, input_points=points, input_labels=labels)
    padded = tiny_model(
        image_embeddings=emb,
        input_points=torch.cat([points, torch.zeros(1, 1, 3, 2)], dim=2),
        input_labels=torch.cat([labels, torch.full((1, 1, 3), -10)], dim=2),
    )
    torch.testing.assert_close(padded.pred_masks, ref.pred_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded.iou_scores, ref.iou_scores, atol=1e-5, rtol=0)


def test_prompts_with_and_without_boxes_share_a_batch(tiny_model):
    emb = tiny_model.get_image_embeddings(torch.randn(1, 3, 128, 128))
    points = torch.tensor([[[[10.0, 20.0]], [[60.0, 30.0]]]])
    labels = torch.ones(1, 2, 1, dtype=torch.long)
    box = torch.tensor([[5.0, 5.0, 90.0, 70.0]])
    mixed = tiny_model(
        image_embeddings=emb,
        input_points=points,
        input_labels=labels,
        input_boxes=torch.stack([box[0], torch.full((4,), float("nan"))])[None],
    )
    with_box = tiny_model(
        image_embeddings=emb, input_points=points[:, :1], input_labels=labels[:, :1], input_boxes=box[None]
    )
    without = tiny_model(image_embeddings=emb, input_points=points[:, 1:], input_labels=labels[:, 1:])
    torch.testing.assert_close(mixed.pred_masks[:, :1], with_box.pred_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed.pred_masks[:, 1:], without.pred_masks, atol=1e-5, rtol=0)


def test_loss_backpropagates_to_decoder(tiny_model):
    tiny_model.train()
    out = tiny_model(
        pixel_values=torch.randn(1, 3, 128, 128),
        input_boxes=torch.tensor([[[10.0, 10.0, 80.0, 90.0]]]),
        labels=(torch.rand(1, 1, 32, 32) > 0.5).float(),
    )
    assert out.loss.ndim == 0 and out.loss > 0
    out.loss.backward()
    assert tiny_model.mask_decoder.iou_token.weight.grad is not None


def test_from_scratch_init_lets_prompts_reach_the_mask_logits():
    """Heads without residuals get fan-in init: with 0.02 everywhere a fresh model's logits were constant to
    ~1e-5 and training from scratch stalled for hundreds of steps on a single constant prediction."""
    from sam_hf.modeling.common import FanInLinear

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny")).eval()
    decoder = model.mask_decoder
    head = decoder.output_hypernetworks_mlps[0].layers[0]
    assert isinstance(head, FanInLinear)
    assert head.weight.std().item() == pytest.approx(head.in_features**-0.5, rel=0.15)
    upscale = decoder.output_upscaling[0]
    assert upscale.weight.std().item() == pytest.approx(upscale.in_channels**-0.5, rel=0.15)
    assert decoder.transformer.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)
    side = model.config.vision_config.image_size
    with torch.no_grad():
        embeddings = model.get_image_embeddings(torch.randn(1, 3, side, side))
        points = torch.tensor([[[[side * 0.25, side * 0.25]], [[side * 0.75, side * 0.75]]]])
        logits = model(
            image_embeddings=embeddings,
            input_points=points,
            input_labels=torch.ones(1, 2, 1, dtype=torch.long),
            multimask_output=False,
        ).pred_masks[0, :, 0]
    assert logits.std().item() > 0.05  # was 6e-6
    assert (logits[0] - logits[1]).abs().mean().item() > 1e-3  # the prompt moves the mask; was 5e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_points": torch.zeros(1, 1, 2, 2)}, "given together"),
        (
            {"input_points": torch.zeros(1, 2, 2), "input_labels": torch.zeros(1, 2)},
            "input_points must have shape",
        ),
        ({"input_boxes": torch.zeros(1, 1, 3)}, "input_boxes"),
        ({"input_masks": torch.zeros(1, 1, 128, 128)}, "low-resolution mask logits"),
    ],
)
def test_bad_prompt_shapes_raise(tiny_model, kwargs, match):
    emb = torch.zeros(1, 32, 8, 8)
    with pytest.raises(ValueError, match=match):
        tiny_model(image_embeddings=emb, **kwargs)


def test_unknown_keywords_are_refused_by_name(tiny_model):
    """A misspelt prompt (`input_point`) must not run unprompted, also through a PEFT wrapper."""
    from sam_hf.training.lora import apply_lora

    embeddings = torch.zeros(1, 32, 8, 8)
    points = torch.full((1, 1, 1, 2), 64.0)
    labels = torch.ones(1, 1, 1, dtype=torch.long)
    with pytest.raises(TypeError, match="unexpected keyword argument 'input_point'"):
        tiny_model(image_embeddings=embeddings, input_point=points, input_labels=labels)
    peft_model = apply_lora(tiny_model, r=2, verbose=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'output_attentions'"):
        peft_model(image_embeddings=embeddings, output_attentions=True)
    output = peft_model(image_embeddings=embeddings, input_points=points, input_labels=labels)
    assert output.pred_masks.shape == (1, 1, 3, 32, 32)


def test_pixel_values_shape_is_checked(tiny_model):
    with pytest.raises(ValueError, match="SamHFProcessor"):
        tiny_model.get_image_embeddings(torch.zeros(1, 3, 100, 128))


@pytest.mark.slow
def test_vit_b_matches_official(official_vit_b):
    """Same weights, same input: image embeddings and decoder outputs agree with segment_anything."""
    model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    model.load_state_dict(official_vit_b.state_dict(), strict=True)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        ref_emb = official_vit_b.image_encoder(x)
        emb = model.get_image_embeddings(x)
        torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=0)
        pts = torch.tensor([[[500.0, 300.0], [200.0, 700.0]]])
        lab = torch.tensor([[1, 0]])
        box = torch.tensor([[100.0, 100.0, 600.0, 500.0]])
        sparse, dense = official_vit_b.prompt_encoder(points=(pts, lab), boxes=box, masks=None)
        ref_masks, ref_iou = official_vit_b.mask_decoder(
            ref_emb, official_vit_b.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
        out = model(
            image_embeddings=ref_emb, input_points=pts[None], input_labels=lab[None], input_boxes=box[None]
        )
    torch.testing.assert_close(out.pred_masks[0, 0], ref_masks[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.iou_scores[0, 0], ref_iou[0], atol=1e-4, rtol=0)
