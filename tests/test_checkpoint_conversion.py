"""Name and config mapping between our (= Meta's) and transformers' conventions; architecture from shapes."""

from __future__ import annotations

import pytest
import torch
from transformers import SamConfig, SamHQConfig, SamHQModel, SamModel

from sam_hf import SamHFConfig, SamHFModel
from sam_hf.modeling.checkpoint_conversion import (
    TRANSFORMERS_TIED_KEY,
    from_transformers_config,
    from_transformers_state_dict,
    infer_config_from_state_dict,
    to_transformers_config,
    to_transformers_state_dict,
)

_DEEP_IOU_HEAD = {"hidden_size": 32, "num_attention_heads": 2, "mlp_dim": 64, "iou_head_depth": 5}

# --- key renaming and configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        SamHFConfig.from_preset("tiny"),
        SamHFConfig(**{**SamHFConfig.from_preset("tiny").to_dict(), "mask_decoder_config": _DEEP_IOU_HEAD}),
        SamHFConfig.from_preset("vit_b"),
        SamHFConfig.from_preset("vit_h"),
    ],
    ids=["tiny", "tiny-iou-depth-5", "vit_b", "vit_h"],
)
def test_renaming_gives_exactly_transformers_names_and_inverts(config):
    with torch.device("meta"):
        ours = SamHFModel(config).state_dict()
        theirs = SamModel(to_transformers_config(config)).state_dict()
    renamed = to_transformers_state_dict(ours, config)
    assert set(renamed) == set(theirs) - {TRANSFORMERS_TIED_KEY}
    assert all(tuple(renamed[k].shape) == tuple(theirs[k].shape) for k in renamed)
    back = from_transformers_state_dict(renamed, config)
    assert list(back) == list(ours)
    assert all(back[k] is ours[k] for k in ours)


@pytest.mark.parametrize("name", ["tiny_hq", "sam_hq_vit_b", "sam_hq_vit_h"])
def test_sam_hq_renaming_gives_exactly_sam_hq_model_names_and_inverts(name):
    config = SamHFConfig.from_preset(name)
    with torch.device("meta"):
        ours = SamHFModel(config).state_dict()
        transformers_config = to_transformers_config(config)
        theirs = SamHQModel(transformers_config).state_dict()
    assert isinstance(transformers_config, SamHQConfig)
    assert transformers_config.architectures == ["SamHQModel"]
    renamed = to_transformers_state_dict(ours, config)
    assert set(renamed) == set(theirs) - {TRANSFORMERS_TIED_KEY}
    assert all(tuple(renamed[k].shape) == tuple(theirs[k].shape) for k in renamed)
    for expected in [
        "mask_decoder.hq_token.weight",
        "mask_decoder.hq_mask_mlp.proj_in.weight",
        "mask_decoder.hq_mask_mlp.layers.0.bias",
        "mask_decoder.compress_vit_norm.bias",
        "mask_decoder.encoder_conv2.weight",
        "mask_decoder.mask_conv1.weight",
    ]:
        assert expected in renamed
    back = from_transformers_state_dict(renamed, config)
    assert list(back) == list(ours)
    assert all(back[k] is ours[k] for k in ours)


@pytest.mark.parametrize("name", ["tiny_hq", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h"])
def test_sam_hq_config_round_trip_through_transformers(name):
    config = SamHFConfig.from_preset(name)
    transformers_config = to_transformers_config(config)
    assert transformers_config.mask_decoder_config.vit_dim == config.vision_config.hidden_size
    assert from_transformers_config(transformers_config).to_dict() == config.to_dict()
    # config.json's dict: its model_type "sam_hq" says which config class reads it
    assert transformers_config.to_dict()["model_type"] == "sam_hq"
    assert from_transformers_config(transformers_config.to_dict()).to_dict() == config.to_dict()


def test_transformers_sam_hq_default_config_is_sam_hq_vit_b():
    assert (
        from_transformers_config(SamHQConfig()).to_dict() == SamHFConfig.from_preset("sam_hq_vit_b").to_dict()
    )


@pytest.mark.parametrize("name", ["vit_t", "sam_hq_vit_tiny"])
def test_tiny_vit_models_have_no_transformers_config(name):
    with pytest.raises(ValueError, match="holds SAM's ViT image encoder only"):
        to_transformers_config(SamHFConfig.from_preset(name))


def test_transformers_sam_hq_config_with_another_early_width_is_rejected():
    config = SamHQConfig(mask_decoder_config={"vit_dim": 1024})
    with pytest.raises(ValueError, match=r"mask_decoder_config.vit_dim=1024 \(expected 768\)"):
        from_transformers_config(config)


def test_renaming_spot_checks():
    config = SamHFConfig.from_preset("tiny")
    names = list(to_transformers_state_dict(dict.fromkeys(SamHFModel(config).state_dict()), config))
    for expected in [
        "shared_image_embedding.positional_embedding",
        "vision_encoder.patch_embed.projection.weight",
        "vision_encoder.layers.1.layer_norm2.bias",
        "vision_encoder.layers.1.attn.rel_pos_h",
        "vision_encoder.neck.layer_norm2.weight",
        "prompt_encoder.point_embed.3.weight",
        "prompt_encoder.mask_embed.conv3.bias",
        "mask_decoder.transformer.layers.1.layer_norm4.weight",
        "mask_decoder.transformer.layer_norm_final_attn.bias",
        "mask_decoder.upscale_layer_norm.weight",
        "mask_decoder.output_hypernetworks_mlps.3.proj_out.weight",
        "mask_decoder.output_hypernetworks_mlps.3.layers.0.weight",
        "mask_decoder.iou_prediction_head.proj_in.bias",
    ]:
        assert expected in names


@pytest.mark.parametrize("name", ["tiny", "vit_b", "vit_l", "vit_h"])
def test_config_round_trip_through_transformers(name):
    config = SamHFConfig.from_preset(name)
    assert from_transformers_config(to_transformers_config(config)).to_dict() == config.to_dict()
    assert from_transformers_config(to_transformers_config(config).to_dict()).to_dict() == config.to_dict()


def test_transformers_default_config_is_vit_b():
    assert from_transformers_config(SamConfig()).to_dict() == SamHFConfig.from_preset("vit_b").to_dict()


def test_transformers_4_style_config_json_is_read():
    """Configs written by transformers 4.x carry generation fields and empty sub-config model types."""
    legacy = {"model_type": "", "do_sample": False, "num_beams": 1, "pruned_heads": {}, "torch_dtype": None}
    vision = {**SamConfig().vision_config.to_dict(), **legacy, "dropout": 0.0, "initializer_factor": 1.0}
    config_json = {
        "architectures": ["SamModel"],
        "model_type": "sam",
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": vision,
        "prompt_encoder_config": {**SamConfig().prompt_encoder_config.to_dict(), **legacy},
        "mask_decoder_config": {**SamConfig().mask_decoder_config.to_dict(), **legacy},
    }
    assert from_transformers_config(config_json).to_dict() == SamHFConfig.from_preset("vit_b").to_dict()


def test_transformers_config_sam_cannot_represent_is_rejected():
    config = SamConfig(vision_config={"hidden_act": "relu"}, prompt_encoder_config={"image_size": 512})
    with pytest.raises(
        ValueError, match=r"vision_config.hidden_act='relu' \(expected 'gelu'\).*image_size=512"
    ):
        from_transformers_config(config)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_meta_variant_is_read_from_shapes(name):
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        state_dict = sam_model_registry[name]().state_dict()
    assert infer_config_from_state_dict(state_dict).to_dict() == SamHFConfig.from_preset(name).to_dict()


def test_tiny_shapes_give_everything_but_decoder_heads(tiny_model):
    inferred = infer_config_from_state_dict(tiny_model.state_dict()).to_dict()
    expected = tiny_model.config.to_dict()
    assert inferred["mask_decoder_config"].pop("num_attention_heads") == 8
    expected["mask_decoder_config"].pop("num_attention_heads")
    assert inferred == expected
