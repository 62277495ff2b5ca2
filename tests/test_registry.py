"""The image encoder registry: SamHFModel builds the encoder its config names, and nothing above the model
needs to know which."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from sam_hf import SamHFConfig, SamHFModel, SamPredictor
from sam_hf.modeling import configuration_sam_hf, registry
from sam_hf.modeling.image_encoder import ImageEncoderViT
from sam_hf.modeling.mask_decoder import MaskDecoder
from sam_hf.modeling.tiny_vit import TinyViT


@pytest.mark.parametrize(("preset", "encoder_class"), [("tiny", ImageEncoderViT), ("tiny_vit_t", TinyViT)])
def test_model_builds_the_encoder_its_config_names(preset, encoder_class):
    model = SamHFModel(SamHFConfig.from_preset(preset)).eval()
    assert type(model.image_encoder) is encoder_class
    embeddings = model.get_image_embeddings(torch.randn(2, 3, 128, 128))
    assert embeddings.shape == (2, 32, 8, 8)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="image encoder 'vit' is registered already, as ImageEncoderViT"):
        registry.register_image_encoder("vit")(type("Other", (nn.Module,), {}))


def test_unregistered_encoder_type_is_named():
    config = SamHFConfig.from_preset("tiny")
    config.vision_config.encoder_type = "hiera"
    with pytest.raises(ValueError, match=r"encoder_type must be one of \['tiny_vit', 'vit'\], got 'hiera'"):
        registry.build_image_encoder(config)


class _PoolingConfig(PretrainedConfig):
    model_type = "sam_hf_pooling"
    encoder_type = "pooling"

    def __init__(self, image_size=128, patch_size=16, num_channels=3, output_channels=32, **kwargs):
        self.image_size, self.patch_size = image_size, patch_size
        self.num_channels, self.output_channels = num_channels, output_channels
        super().__init__(**kwargs)
        self.encoder_type = type(self).encoder_type

    @property
    def embedding_size(self):
        return self.image_size // self.patch_size


class _PoolingEncoder(nn.Module):
    """A new encoder: average pooling and a 1x1 convolution to the embedding width."""

    def __init__(self, config):
        super().__init__()
        self.pool = nn.AvgPool2d(config.patch_size)
        self.proj = nn.Conv2d(config.num_channels, config.output_channels, 1)

    def forward(self, pixel_values):
        return self.proj(self.pool(pixel_values))


def test_a_new_encoder_registered_by_name_runs_through_the_predictor(monkeypatch):
    monkeypatch.setitem(configuration_sam_hf.VISION_CONFIG_CLASSES, "pooling", _PoolingConfig)
    monkeypatch.setitem(registry._IMAGE_ENCODERS.classes, "pooling", _PoolingEncoder)
    _, prompt, decoder = configuration_sam_hf.SAM_HF_PRESETS["tiny"]
    config = SamHFConfig(
        vision_config={"encoder_type": "pooling", "image_size": 128, "output_channels": 32},
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
    )
    model = SamHFModel(config).eval()
    assert type(model.image_encoder) is _PoolingEncoder
    predictor = SamPredictor(model)
    predictor.set_image(torch.randint(0, 255, (90, 120, 3), dtype=torch.uint8).numpy())
    masks, scores, low_res = predictor.predict(point_coords=[[60, 45]], point_labels=[1])
    assert masks.shape == (3, 90, 120) and scores.shape == (3,) and low_res.shape == (3, 32, 32)


@pytest.mark.parametrize("preset", ["tiny", "tiny_vit_t", "tiny_hq", "tiny_vit_t_hq"])
def test_init_weights_sets_every_tensor_of_each_encoder(preset):
    """transformers initialises what a checkpoint lacks with `_init_weights` alone: it must reach every
    parameter and buffer of each encoder (batch-norm statistics and TinyViT's attention biases included)."""
    model = SamHFModel(SamHFConfig.from_preset(preset))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(float("nan") if tensor.is_floating_point() else -1)
    model.apply(model._init_weights)
    unset = [
        name
        for name, tensor in model.state_dict().items()
        if (tensor.isnan() if tensor.is_floating_point() else tensor == -1).any()
    ]
    assert unset == []


class _GatedDecoderConfig(configuration_sam_hf.SamHFMaskDecoderConfig):
    model_type = "sam_hf_gated_mask_decoder"
    decoder_type = "gated"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)


class _GatedDecoder(MaskDecoder):
    """A new decoder variant: SAM's, its mask logits gated by a learned per-pixel map of the image embedding,
    which it asks of the image under its own feature name."""

    image_feature_names = ("image_embeddings",)

    def __init__(self, config):
        super().__init__(config)
        self.gate = nn.Conv2d(config.mask_decoder_config.hidden_size, 1, 1)

    def predict_masks(self, image_features, image_pe, sparse, token_mask, dense, point_batch_size=1):
        masks, iou = super().predict_masks(
            image_features, image_pe, sparse, token_mask, dense, point_batch_size
        )
        gate = nn.functional.interpolate(self.gate(image_features["image_embeddings"]), size=masks.shape[-2:])
        return masks * torch.sigmoid(gate).repeat_interleave(point_batch_size, dim=0), iou

    def prompt_head(self, image_features, hq_token_only=False, multimask_output=True):
        head = super().prompt_head(image_features, hq_token_only, multimask_output)
        gate = nn.functional.interpolate(self.gate(image_features["image_embeddings"]), scale_factor=4)

        def gated(queries, keys, h, w):
            masks, iou = head(queries, keys, h, w)
            return masks * torch.sigmoid(gate), iou

        return gated


def test_a_new_decoder_registered_by_name_runs_through_the_predictor_and_the_generator(monkeypatch):
    """Adding a decoder variant touches modeling/ only: registered by name, it is built from its config, and
    the predictor, the generator's fast path and the model's forward run it unchanged."""
    from sam_hf import SamAutomaticMaskGenerator

    monkeypatch.setitem(configuration_sam_hf.MASK_DECODER_CONFIG_CLASSES, "gated", _GatedDecoderConfig)
    monkeypatch.setitem(registry._MASK_DECODERS.classes, "gated", _GatedDecoder)
    vision, prompt, decoder = configuration_sam_hf.SAM_HF_PRESETS["tiny"]
    config = SamHFConfig(
        vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config={**decoder, "decoder_type": "gated"},
    )
    torch.manual_seed(0)
    model = SamHFModel(config).eval()
    assert type(model.mask_decoder) is _GatedDecoder
    assert type(SamHFConfig.from_dict(config.to_dict()).mask_decoder_config) is _GatedDecoderConfig
    image = torch.randint(0, 255, (90, 120, 3), dtype=torch.uint8).numpy()
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=[[60, 45]], point_labels=[1])
    assert masks.shape == (3, 90, 120) and scores.shape == (3,) and low_res.shape == (3, 32, 32)
    opened = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    records = SamAutomaticMaskGenerator(model, points_per_side=2, **opened).generate(image)
    assert len(records) == 3 * 4
    # the generator's fast path computes what the predictor's forward computes, gate included
    record = records[0]
    point_masks, point_scores, _ = predictor.predict(point_coords=record["point_coords"], point_labels=[1])
    index = int(np.argmin(np.abs(point_scores - record["predicted_iou"])))
    assert abs(point_scores[index] - record["predicted_iou"]) < 1e-4
    assert (point_masks[index] != record["segmentation"]).mean() < 1e-3
