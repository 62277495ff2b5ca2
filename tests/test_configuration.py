"""SamHFConfig: presets, derived fields, serialisation round trips, errors on inconsistent configs."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from sam_hf import SAM_HF_PRESETS, SamHFConfig
from sam_hf.modeling.configuration_sam_hf import (
    SamHFHQMaskDecoderConfig,
    SamHFMaskDecoderConfig,
    SamHFTinyViTConfig,
    SamHFVisionConfig,
)

# Published architecture of Meta's three checkpoints: (width, depth, heads, global attention blocks).
META_VARIANTS = {
    "vit_b": (768, 12, 12, [2, 5, 8, 11]),
    "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
    "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
}


@pytest.mark.parametrize("name", sorted(META_VARIANTS))
def test_sam_presets_match_meta_variants(name):
    config = SamHFConfig.from_preset(name)
    vision = config.vision_config
    assert (
        vision.hidden_size,
        vision.num_hidden_layers,
        vision.num_attention_heads,
        vision.global_attn_indexes,
    ) == META_VARIANTS[name]
    assert (vision.image_size, vision.patch_size, vision.window_size, vision.output_channels) == (
        1024,
        16,
        14,
        256,
    )
    assert config.prompt_encoder_config.hidden_size == 256
    assert config.prompt_encoder_config.mask_input_channels == 16
    decoder = config.mask_decoder_config
    assert (decoder.hidden_size, decoder.num_hidden_layers, decoder.num_attention_heads, decoder.mlp_dim) == (
        256,
        2,
        8,
        2048,
    )
    assert (config.image_embedding_size, config.mask_size) == (64, 256)


def test_tiny_preset_derived_fields():
    config = SamHFConfig.from_preset("tiny")
    assert config.vision_config.image_size == 128
    assert config.vision_config.embedding_size == 8
    assert (config.image_embedding_size, config.mask_size) == (8, 32)


def test_presets_table_lists_all_variants():
    assert set(SAM_HF_PRESETS) == {
        "vit_b", "vit_l", "vit_h", "vit_t",
        "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny",
        "tiny", "tiny_vit_t", "tiny_hq", "tiny_vit_t_hq", "sam_hf_tiny",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "decoder_class"),
    [
        ("vit_b", SamHFMaskDecoderConfig),
        ("sam_hq_vit_b", SamHFHQMaskDecoderConfig),
        ("tiny_vit_t_hq", SamHFHQMaskDecoderConfig),
    ],
)
def test_decoder_section_class_is_named_by_decoder_type(preset, decoder_class):
    config = SamHFConfig.from_preset(preset)
    assert type(config.mask_decoder_config) is decoder_class
    saved = config.to_dict()
    assert saved["mask_decoder_config"]["decoder_type"] == decoder_class.decoder_type
    assert type(SamHFConfig.from_dict(saved).mask_decoder_config) is decoder_class


def test_config_without_decoder_type_is_sam_and_an_unknown_one_is_named():
    saved = SamHFConfig.from_preset("tiny").to_dict()
    del saved["mask_decoder_config"]["decoder_type"]
    assert type(SamHFConfig.from_dict(saved).mask_decoder_config) is SamHFMaskDecoderConfig
    saved["mask_decoder_config"]["decoder_type"] = "sam2"
    with pytest.raises(
        ValueError, match=r"mask_decoder_config.decoder_type must be one of \['hq', 'sam'\], got 'sam2'"
    ):
        SamHFConfig.from_dict(saved)


def test_hq_early_feature_channels_come_from_the_encoder():
    assert SamHFConfig.from_preset("sam_hq_vit_l").vision_config.intermediate_channels == 1024
    assert SamHFConfig.from_preset("sam_hq_vit_tiny").vision_config.intermediate_channels == 160


def test_from_preset_forwards_keyword_arguments():
    assert SamHFConfig.from_preset("tiny", initializer_range=0.5).initializer_range == 0.5


@pytest.mark.parametrize("name", sorted(SAM_HF_PRESETS))
def test_dict_round_trip(name):
    config = SamHFConfig.from_preset(name)
    restored = SamHFConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    assert type(restored.vision_config) is type(config.vision_config)


def test_save_load_round_trip(tmp_path):
    config = SamHFConfig.from_preset("tiny")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "sam_hf"
    assert saved["vision_config"]["global_attn_indexes"] == [1]
    restored = SamHFConfig.from_pretrained(tmp_path)
    assert restored.to_dict() == config.to_dict()
    assert (restored.image_embedding_size, restored.mask_size) == (8, 32)


def test_auto_config_resolves_sam_hf(tmp_path):
    SamHFConfig.from_preset("tiny").save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SamHFConfig
    assert type(AutoConfig.for_model("sam_hf")) is SamHFConfig


def test_sections_accept_configs_and_dicts_with_model_type():
    vision = SamHFVisionConfig(hidden_size=64, num_hidden_layers=2, global_attn_indexes=[1])
    as_dict = {**vision.to_dict(), "model_type": "sam_hf_vision"}
    assert SamHFConfig(vision_config=vision).vision_config is vision
    assert SamHFConfig(vision_config=as_dict).vision_config.hidden_size == 64


def test_unknown_preset_is_rejected():
    with pytest.raises(
        ValueError,
        match=r"preset must be one of \['sam_hf_tiny', 'sam_hq_vit_b', .*'vit_t'\], got 'vit_x'",
    ):
        SamHFConfig.from_preset("vit_x")


def test_image_size_must_be_a_multiple_of_patch_size():
    with pytest.raises(ValueError, match="image_size must be a multiple of patch_size, got 1000 and 16"):
        SamHFVisionConfig(image_size=1000)


def test_global_blocks_must_exist():
    with pytest.raises(
        ValueError, match=r"global_attn_indexes must index blocks in \[0, 12\), got \[2, 12\]"
    ):
        SamHFVisionConfig(global_attn_indexes=[2, 12])


def test_sections_must_share_one_width():
    with pytest.raises(ValueError, match="must share one embedding width"):
        SamHFConfig(prompt_encoder_config={"hidden_size": 128})


def test_section_of_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="expected SamHFVisionConfig, a dict or None, got int"):
        SamHFConfig(vision_config=3)


def test_encoder_type_is_saved_and_old_config_json_loads_as_vit(tmp_path):
    config = SamHFConfig.from_preset("tiny")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["vision_config"]["encoder_type"] == "vit"
    del saved["vision_config"]["encoder_type"]  # a config.json written before encoders had a name
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = SamHFConfig.from_pretrained(tmp_path)
    assert type(loaded.vision_config) is SamHFVisionConfig
    assert loaded.vision_config.to_dict() == config.vision_config.to_dict()


def test_mobile_sam_preset_is_tiny_vit_5m_with_sam_decoder(tmp_path):
    config = SamHFConfig.from_preset("vit_t")
    vision = config.vision_config
    assert type(vision) is SamHFTinyViTConfig and vision.encoder_type == "tiny_vit"
    assert (vision.embed_dims, vision.depths, vision.num_heads, vision.window_sizes) == (
        [64, 128, 160, 320],
        [2, 2, 6, 2],
        [2, 4, 5, 10],
        [7, 7, 14, 7],
    )
    assert (config.image_size, config.image_embedding_size, config.mask_size) == (1024, 64, 256)
    assert (
        config.mask_decoder_config.to_dict() == SamHFConfig.from_preset("vit_b").mask_decoder_config.to_dict()
    )
    config.save_pretrained(tmp_path)
    loaded = SamHFConfig.from_pretrained(tmp_path)
    assert type(loaded.vision_config) is SamHFTinyViTConfig
    assert loaded.vision_config.to_dict() == vision.to_dict()


def test_unknown_encoder_type_is_named():
    with pytest.raises(
        ValueError, match=r"vision_config.encoder_type must be one of \['tiny_vit', 'vit'\], got 'hiera'"
    ):
        SamHFConfig(vision_config={"encoder_type": "hiera"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"depths": [2, 2, 6]}, "one entry per stage"),
        ({"image_size": 1000}, "image_size must be a multiple of 16, got 1000"),
        ({"num_heads": [2, 4, 6, 10]}, "multiple of its num_heads"),
    ],
)
def test_tiny_vit_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        SamHFTinyViTConfig(**fields)
