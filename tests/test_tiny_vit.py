"""TinyViT (MobileSAM's image encoder): parity of a `vit_t` SamHFModel with `mobile_sam` on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_hf import SamHFConfig, SamHFModel, SamPredictor
from sam_hf.modeling.tiny_vit import TinyViT

# fp32 on the same weights: embeddings, low-res logits and IoU predictions agree to this, absolute.
ATOL = 1e-4


@pytest.fixture(scope="module")
def vit_t_predictors(official_vit_t, photos):
    """(mobile_sam's SamPredictor, ours) with the astronaut photo set, on the same weights."""
    from mobile_sam import SamPredictor as OfficialPredictor

    model = SamHFModel(SamHFConfig.from_preset("vit_t")).eval()
    model.load_state_dict(official_vit_t.state_dict(), strict=True)
    official, ours = OfficialPredictor(official_vit_t), SamPredictor(model)
    official.set_image(photos["astronaut"])
    ours.set_image(photos["astronaut"])
    return official, ours


def test_vit_t_preset_builds_tiny_vit_with_mobile_sam_parameter_names(official_vit_t):
    model = SamHFModel(SamHFConfig.from_preset("vit_t"))
    assert type(model.image_encoder) is TinyViT and model.image_encoder.img_size == 1024
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in official_vit_t.state_dict().items()}


def test_parity_with_mobile_sam(vit_t_predictors):
    """Image embeddings, low-res logits and IoU predictions within 1e-4; masks equal where the reference logit
    is clear of the threshold."""
    official, ours = vit_t_predictors
    torch.testing.assert_close(ours.get_image_embedding(), official.get_image_embedding(), atol=ATOL, rtol=0)
    height, width = official.original_size
    box = np.array([0.2 * width, 0.15 * height, 0.8 * width, 0.9 * height])
    points = np.array([[0.5 * width, 0.4 * height], [0.3 * width, 0.7 * height]])
    cases = [
        {"point_coords": points[:1], "point_labels": np.array([1])},
        {"point_coords": points, "point_labels": np.array([1, 0]), "multimask_output": False},
        {"box": box},
    ]
    for case in cases:
        official_masks, official_scores, official_low = official.predict(**case)
        masks, scores, low = ours.predict(**case)
        np.testing.assert_allclose(low, official_low, atol=ATOL, rtol=0)
        np.testing.assert_allclose(scores, official_scores, atol=ATOL, rtol=0)
        official_logits = official.predict(**case, return_logits=True)[0]
        clear = np.abs(official_logits) > 1e-3
        assert (masks[clear] == official_masks[clear]).all()


def test_conv_bn_folds_in_eval_and_calls_hooked_modules():
    """In eval mode ConvBN is one convolution with the batch norm folded in, equal to the two modules called
    in turn; a hook on either module makes it call them, so the hook runs."""
    from sam_hf.modeling.tiny_vit import ConvBN

    torch.manual_seed(0)
    block = ConvBN(8, 16, kernel=3, stride=2).eval()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-1, 1)
        block.bn.running_var.uniform_(0.5, 2)
        block.bn.weight.uniform_(0.5, 2)
        block.bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = block.bn(block.c(x))
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)
        calls = []
        handle = block.bn.register_forward_hook(lambda *args: calls.append(1))
        torch.testing.assert_close(block(x), expected, atol=0, rtol=0)
        handle.remove()
    assert calls == [1]
