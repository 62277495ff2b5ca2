"""Image encoder attention: the blocked decomposed-relative-position attention equals the dense formula."""

from __future__ import annotations

import pytest
import torch

from sam_hf import SamHFModel
from sam_hf.modeling import image_encoder
from sam_hf.modeling.image_encoder import _attention_with_decomposed_positions


def _dense_reference(q, k, v, rel_h, rel_w):
    """SAM's eager formula: softmax(q k^T + rel_h[:, :, :, None] + rel_w[:, :, None, :]) v, bias materialised."""
    BH, N, _ = q.shape
    H, W = rel_h.shape[-1], rel_w.shape[-1]
    bias = (rel_h[:, :, :, None] + rel_w[:, :, None, :]).reshape(BH, N, H * W)
    return torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1) @ v


@pytest.mark.parametrize("grid", [(4, 6), (5, 40)], ids=["folded-bias", "added-bias"])
@pytest.mark.parametrize("block_elements", [1 << 21, 97], ids=["one-block", "many-blocks"])
def test_blocked_attention_matches_dense_formula_and_its_gradients(monkeypatch, grid, block_elements):
    monkeypatch.setattr(image_encoder, "_SCORE_BLOCK_ELEMENTS", block_elements)
    H, W = grid
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, H * W, 8, generator=generator, requires_grad=True) for _ in range(3))
    rel_h = torch.randn(3, H * W, H, generator=generator, requires_grad=True)
    rel_w = torch.randn(3, H * W, W, generator=generator, requires_grad=True)
    inputs = (q, k, v, rel_h, rel_w)

    ours = _attention_with_decomposed_positions(*inputs)
    reference = _dense_reference(*inputs)
    assert ours.shape == (3, H * W, 8)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)

    upstream = torch.randn(ours.shape, generator=generator)
    ours_grads = torch.autograd.grad(ours, inputs, upstream)
    reference_grads = torch.autograd.grad(reference, inputs, upstream)
    for ours_grad, reference_grad in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(ours_grad, reference_grad, atol=1e-5, rtol=1e-5)


def test_bf16_encoder_in_front_of_float32_decoder(tiny_model):
    pixel_values = torch.randn(1, 3, 128, 128)
    points, labels = torch.tensor([[[[40.0, 50.0]]]]), torch.ones(1, 1, 1, dtype=torch.long)
    with torch.inference_mode():
        reference = tiny_model(pixel_values=pixel_values, input_points=points, input_labels=labels)
        tiny_model.image_encoder.to(torch.bfloat16)
        mixed = tiny_model(pixel_values=pixel_values, input_points=points, input_labels=labels)
    assert mixed.image_embeddings.dtype == torch.bfloat16
    assert mixed.pred_masks.dtype == torch.float32
    # bf16 embeddings (8-bit mantissa) through the float32 decoder: logits agree to a few percent of their scale.
    scale = reference.pred_masks.abs().max()
    assert (mixed.pred_masks - reference.pred_masks).abs().max() < 0.1 * scale


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
    reason="a full-size ViT-B encode in bf16 takes many minutes where the CPU has no AVX-512 (bf16 emulated)",
)
@pytest.mark.parametrize("mode", ["bf16-weights", "bf16-autocast"])
def test_bf16_encoder_has_no_nans_at_full_size(mode):
    from sam_hf import SamHFConfig

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("vit_b")).eval()
    if mode == "bf16-weights":
        model.image_encoder.to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "bf16-autocast"):
        embeddings = model.get_image_embeddings(torch.randn(1, 3, 1024, 1024))
    assert embeddings.shape == (1, 256, 64, 64)
    assert torch.isfinite(embeddings).all()
