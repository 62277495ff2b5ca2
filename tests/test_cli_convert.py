"""`sam-hf convert`: every format to every other, bit-exact round trips, outputs the original tools load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import SamModel

from conftest import assert_bit_exact
from sam_hf import SamHFConfig, SamHFModel
from sam_hf.cli import main
from sam_hf.modeling.checkpoint_conversion import to_transformers_state_dict
from sam_hf.modeling.checkpoint_io import save_meta_checkpoint


def _convert(source, output, *options: str) -> None:
    assert main(["convert", str(source), str(output), *options]) == 0


def test_round_trip_through_transformers_is_bit_exact(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "ours")
    _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers")
    assert "wrote transformers checkpoint" in capsys.readouterr().out
    _convert(tmp_path / "hf", tmp_path / "back")
    assert_bit_exact(SamHFModel.from_pretrained(tmp_path / "back").state_dict(), tiny_model.state_dict())
    # transformers -> transformers rewrites the very same file content
    _convert(tmp_path / "hf", tmp_path / "hf_again", "--to", "transformers")
    assert_bit_exact(
        load_file(tmp_path / "hf_again" / "model.safetensors"),
        load_file(tmp_path / "hf" / "model.safetensors"),
    )


def test_transformers_output_runs_in_transformers(tiny_model, tmp_path):
    """The converted folder runs in transformers with our numbers. Its config keeps transformers' eps 1e-6 in
    the two-way blocks' LayerNorms (as in the facebook/sam-vit-* repos) where SAM uses 1e-5: on this fresh
    model (logits of order 0.3) that alone moves logits by up to 1e-3, so the outputs are compared twice:
    as converted, and with those LayerNorms set to SAM's eps, where they must agree to 1e-5."""
    tiny_model.save_pretrained(tmp_path / "ours")
    _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers")
    theirs = SamModel.from_pretrained(tmp_path / "hf").eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 128, 128, generator=generator)
    points = torch.rand(1, 2, 1, 2, generator=generator) * 128  # (batch, prompts, points, XY)
    labels = torch.ones(1, 2, 1, dtype=torch.long)
    with torch.inference_mode():
        expected = tiny_model(pixel_values, input_points=points, input_labels=labels)
        actual = theirs(pixel_values=pixel_values, input_points=points, input_labels=labels)
        assert actual.pred_masks.shape == expected.pred_masks.shape == (1, 2, 3, 32, 32)
        torch.testing.assert_close(actual.pred_masks, expected.pred_masks, rtol=0, atol=2e-3)
        torch.testing.assert_close(actual.iou_scores, expected.iou_scores, rtol=0, atol=2e-3)
        for module in theirs.mask_decoder.transformer.modules():
            if type(module) is torch.nn.LayerNorm:  # not SamLayerNorm (channels-first, 1e-6 in SAM too)
                module.eps = 1e-5
        same_eps = theirs(pixel_values=pixel_values, input_points=points, input_labels=labels)
    torch.testing.assert_close(same_eps.pred_masks, expected.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(same_eps.iou_scores, expected.iou_scores, rtol=0, atol=1e-5)


def test_round_trip_through_meta_is_bit_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ours")
    _convert(tmp_path / "ours", tmp_path / "sam_tiny.pth", "--to", "meta")
    state_dict = torch.load(tmp_path / "sam_tiny.pth", map_location="cpu", weights_only=True)
    assert_bit_exact(state_dict, tiny_model.state_dict())  # a plain state dict with Meta's names
    _convert(tmp_path / "sam_tiny.pth", tmp_path / "back", "--preset", "tiny")
    back = SamHFModel.from_pretrained(tmp_path / "back")
    assert back.config.mask_decoder_config.num_attention_heads == 2  # from the preset, not SAM's 8
    assert_bit_exact(back.state_dict(), tiny_model.state_dict())


def test_half_precision_is_kept(tiny_model, tmp_path):
    half = {k: v.half() for k, v in tiny_model.state_dict().items()}
    save_meta_checkpoint(half, tmp_path / "half.pth")
    _convert(tmp_path / "half.pth", tmp_path / "hf", "--to", "transformers", "--preset", "tiny")
    _convert(tmp_path / "hf", tmp_path / "back.pth", "--to", "meta")
    assert_bit_exact(torch.load(tmp_path / "back.pth", map_location="cpu", weights_only=True), half)


def test_output_kind_is_checked(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ours")
    with pytest.raises(
        ValueError, match="output must be a file path for the meta format, got the existing folder"
    ):
        _convert(tmp_path / "ours", tmp_path, "--to", "meta", "--debug")
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ValueError, match="output must be a folder for the transformers format, got the existing file"
    ):
        _convert(tmp_path / "ours", tmp_path / "file", "--to", "transformers", "--debug")


def test_unknown_format_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path), str(tmp_path / "out"), "--to", "onnx"])


@pytest.mark.slow
def test_meta_vit_b_through_sam_hf_loads_in_official_code(official_vit_b, tmp_path):
    from segment_anything import sam_model_registry

    original = official_vit_b.state_dict()
    save_meta_checkpoint(original, tmp_path / "sam_vit_b.pth")
    _convert(tmp_path / "sam_vit_b.pth", tmp_path / "ours")  # variant read from the shapes
    _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers")
    _convert(tmp_path / "hf", tmp_path / "exported.pth", "--to", "meta")
    reloaded = sam_model_registry["vit_b"](checkpoint=str(tmp_path / "exported.pth"))
    assert_bit_exact(reloaded.state_dict(), original)


def test_mobile_sam_round_trip_through_sam_hf_is_bit_exact(official_vit_t, tmp_path):
    """mobile_sam.pt -> sam_hf -> the official layout again, bit for bit, which MobileSAM's builder loads."""
    from mobile_sam import sam_model_registry as mobile_sam_registry

    torch.save(official_vit_t.state_dict(), tmp_path / "mobile_sam.pt")
    _convert(tmp_path / "mobile_sam.pt", tmp_path / "ours")
    assert SamHFModel.from_pretrained(tmp_path / "ours").config.vision_config.encoder_type == "tiny_vit"
    _convert(tmp_path / "ours", tmp_path / "back.pt", "--to", "meta")
    back = torch.load(tmp_path / "back.pt", map_location="cpu", weights_only=True)
    assert_bit_exact(back, official_vit_t.state_dict())
    mobile_sam_registry["vit_t"](checkpoint=str(tmp_path / "back.pt"))  # loads strictly


def test_sam_hq_converts_between_every_format_bit_exact(tmp_path):
    """SAM-HQ: sam_hf -> transformers (SamHQModel's folder, loaded by transformers strictly) -> the official
    layout -> sam_hf, every tensor equal at each step."""
    from transformers import SamHQModel, SamHQProcessor

    torch.manual_seed(0)
    model = SamHFModel(SamHFConfig.from_preset("tiny_hq")).eval()
    model.save_pretrained(tmp_path / "ours")
    _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers")
    theirs = SamHQModel.from_pretrained(tmp_path / "hf")
    assert theirs.config.model_type == "sam_hq"
    assert isinstance(SamHQProcessor.from_pretrained(tmp_path / "hf"), SamHQProcessor)
    assert_bit_exact(
        load_file(tmp_path / "hf" / "model.safetensors"),
        to_transformers_state_dict(model.state_dict(), model.config),
    )
    _convert(tmp_path / "hf", tmp_path / "sam_hq.pth", "--to", "meta")
    assert_bit_exact(
        torch.load(tmp_path / "sam_hq.pth", map_location="cpu", weights_only=True), model.state_dict()
    )
    _convert(tmp_path / "sam_hq.pth", tmp_path / "back", "--preset", "tiny_hq")
    back = SamHFModel.from_pretrained(tmp_path / "back")
    assert back.config.mask_decoder_config.decoder_type == "hq"
    assert_bit_exact(back.state_dict(), model.state_dict())


@pytest.mark.slow
def test_official_sam_hq_file_round_trips_through_sam_hf_and_transformers(official_hq_vit_b, tmp_path):
    """sam_hq_vit_b.pth -> sam_hf -> transformers -> the official layout, bit for bit, which
    segment_anything_hq's builder loads."""
    from segment_anything_hq import sam_model_registry as hq_registry

    original = official_hq_vit_b.state_dict()
    save_meta_checkpoint(original, tmp_path / "sam_hq_vit_b.pth")
    _convert(tmp_path / "sam_hq_vit_b.pth", tmp_path / "ours")  # variant read from the keys and shapes
    assert SamHFModel.from_pretrained(tmp_path / "ours").config.mask_decoder_config.decoder_type == "hq"
    _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers")
    _convert(tmp_path / "hf", tmp_path / "exported.pth", "--to", "meta")
    reloaded = hq_registry["vit_b"](checkpoint=str(tmp_path / "exported.pth"))
    assert_bit_exact(reloaded.state_dict(), original)


def test_light_hq_sam_round_trip_through_sam_hf_is_bit_exact(official_hq_vit_tiny, tmp_path):
    """sam_hq_vit_tiny.pth (Light HQ-SAM) -> sam_hf -> the official layout, bit for bit; transformers has no
    TinyViT, which the transformers format says."""
    from segment_anything_hq import sam_model_registry as hq_registry

    torch.save(official_hq_vit_tiny.state_dict(), tmp_path / "sam_hq_vit_tiny.pth")
    _convert(tmp_path / "sam_hq_vit_tiny.pth", tmp_path / "ours")
    config = SamHFModel.from_pretrained(tmp_path / "ours").config
    assert (config.vision_config.encoder_type, config.mask_decoder_config.decoder_type) == ("tiny_vit", "hq")
    _convert(tmp_path / "ours", tmp_path / "back.pth", "--to", "meta")
    assert_bit_exact(
        torch.load(tmp_path / "back.pth", map_location="cpu", weights_only=True),
        official_hq_vit_tiny.state_dict(),
    )
    hq_registry["vit_tiny"](checkpoint=str(tmp_path / "back.pth"))  # loads strictly
    with pytest.raises(ValueError, match="holds SAM's ViT image encoder only"):
        _convert(tmp_path / "ours", tmp_path / "hf", "--to", "transformers", "--debug")
