"""Lossless mapping between SAM's checkpoint conventions: parameter names and configs.

Our parameter names are the official ones (Meta's SAM, MobileSAM's TinyViT, SAM-HQ's decoder), so their state
dicts need no renaming, only their architecture read from tensor shapes (`infer_config_from_state_dict`), the
image encoder and the mask decoder told by their keys. transformers' `SamModel` and `SamHQModel` names differ:
one table of prefix rules (`_transformers_rules`, SAM-HQ's decoder rules included), read left to right or right
to left, maps them both ways, so conversion is a bijection of keys and tensors are never touched: round trips are
bit-exact. Which transformers model a config is (`SamConfig` or `SamHQConfig`) follows the mask decoder's
`decoder_type` (`_TRANSFORMERS_MODELS`). Files are handled in `checkpoint_io`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch
from transformers import PretrainedConfig, SamConfig, SamHQConfig

from .configuration_sam_hf import (
    SamHFConfig,
    SamHFMaskDecoderConfig,
    SamHFVisionConfig,
)
from .registry import image_encoder_classes, mask_decoder_classes

__all__ = [
    "TRANSFORMERS_MODEL_TYPES",
    "TRANSFORMERS_TIED_KEY",
    "TransformersModel",
    "count_indexed",
    "from_transformers_config",
    "from_transformers_state_dict",
    "infer_config_from_state_dict",
    "to_transformers_config",
    "to_transformers_state_dict",
    "transformers_model",
]

# transformers ties this copy of the random-Fourier matrix to `shared_image_embedding.positional_embedding`;
# some checkpoints store both.
TRANSFORMERS_TIED_KEY = "prompt_encoder.shared_embedding.positional_embedding"
# What transformers' SamConfig may say that our architecture cannot represent: field -> the only value we accept.
_TRANSFORMERS_FIXED = {
    "vision_config": {"hidden_act": "gelu", "use_abs_pos": True, "attention_dropout": 0.0},
    "prompt_encoder_config": {"hidden_act": "gelu", "num_point_embeddings": 4},
    "mask_decoder_config": {"hidden_act": "relu"},
}


class TransformersModel(NamedTuple):
    """What transformers calls one of our decoder variants."""

    config_class: type[PretrainedConfig]
    architecture: str  # the model class, as config.json's `architectures` names it
    processor_class: str
    decoder_type: str  # our mask decoder's


# transformers' model type -> its classes, for each decoder variant transformers has.
_TRANSFORMERS_MODELS = {
    "sam": TransformersModel(SamConfig, "SamModel", "SamProcessor", "sam"),
    "sam_hq": TransformersModel(SamHQConfig, "SamHQModel", "SamHQProcessor", "hq"),
}
TRANSFORMERS_MODEL_TYPES = tuple(_TRANSFORMERS_MODELS)
# SAM's decoder head count: the only hyperparameter tensor shapes do not reveal.
_META_DECODER_HEADS = 8


# ---------------------------------------------------------------------------------------------------------------
# Key renaming: ours (= Meta's) <-> transformers'
# ---------------------------------------------------------------------------------------------------------------


def _mlp_rules(prefix: str, depth: int, theirs: str | None = None) -> list[tuple[str, str]]:
    """Our `MLP.layers.0..depth-1` at `prefix` <-> transformers' `proj_in`, `layers.0..depth-3`, `proj_out` at
    `theirs` (default: the same prefix)."""
    theirs = prefix if theirs is None else theirs
    rules = [
        (f"{prefix}layers.0.", f"{theirs}proj_in."),
        (f"{prefix}layers.{depth - 1}.", f"{theirs}proj_out."),
    ]
    rules += [(f"{prefix}layers.{k}.", f"{theirs}layers.{k - 1}.") for k in range(1, depth - 1)]
    return rules


def _transformers_rules(iou_head_depth: int) -> list[tuple[str, str]]:
    """(our prefix, transformers prefix) pairs; `{i}` and `{j}` stand for indices. First match wins."""
    return [
        ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
        ("image_encoder.blocks.{i}.norm{j}.", "vision_encoder.layers.{i}.layer_norm{j}."),
        ("image_encoder.blocks.", "vision_encoder.layers."),
        ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
        ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
        ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
        ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
        ("image_encoder.", "vision_encoder."),
        (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "shared_image_embedding.positional_embedding",
        ),
        ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
        ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
        ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
        ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
        ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
        ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
        (
            "mask_decoder.transformer.layers.{i}.norm{j}.",
            "mask_decoder.transformer.layers.{i}.layer_norm{j}.",
        ),
        ("mask_decoder.transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
        ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
        ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
        ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
        *_mlp_rules("mask_decoder.output_hypernetworks_mlps.{i}.", 3),
        *_mlp_rules("mask_decoder.iou_prediction_head.", iou_head_depth),
        # SAM-HQ's decoder (`SamHQModel`); no SAM checkpoint has these keys.
        ("mask_decoder.hf_token.", "mask_decoder.hq_token."),
        *_mlp_rules("mask_decoder.hf_mlp.", 3, "mask_decoder.hq_mask_mlp."),
        ("mask_decoder.compress_vit_feat.0.", "mask_decoder.compress_vit_conv1."),
        ("mask_decoder.compress_vit_feat.1.", "mask_decoder.compress_vit_norm."),
        ("mask_decoder.compress_vit_feat.3.", "mask_decoder.compress_vit_conv2."),
        ("mask_decoder.embedding_encoder.0.", "mask_decoder.encoder_conv1."),
        ("mask_decoder.embedding_encoder.1.", "mask_decoder.encoder_norm."),
        ("mask_decoder.embedding_encoder.3.", "mask_decoder.encoder_conv2."),
        ("mask_decoder.embedding_maskfeature.0.", "mask_decoder.mask_conv1."),
        ("mask_decoder.embedding_maskfeature.1.", "mask_decoder.mask_norm."),
        ("mask_decoder.embedding_maskfeature.3.", "mask_decoder.mask_conv2."),
    ]


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(pattern)


def _rename(state_dict: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename keys by the first rule whose source prefix matches; keys no rule matches keep their name."""
    compiled = [(_compile(source), target) for source, target in rules]
    renamed = {}
    for key, tensor in state_dict.items():
        new_key = key
        for pattern, target in compiled:
            match = pattern.match(key)
            if match:
                new_key = target.format(**match.groupdict()) + key[match.end() :]
                break
        if new_key in renamed:
            raise ValueError(f"two parameters map to {new_key!r}; the state dict mixes naming conventions")
        renamed[new_key] = tensor
    return renamed


def to_transformers_state_dict(
    state_dict: dict[str, torch.Tensor], config: SamHFConfig
) -> dict[str, torch.Tensor]:
    """Our (= Meta's) parameter names -> transformers' `SamModel` (`SamHQModel`) names; tensors are shared, not
    copied."""
    return _rename(state_dict, _transformers_rules(config.mask_decoder_config.iou_head_depth))


def from_transformers_state_dict(
    state_dict: dict[str, torch.Tensor], config: SamHFConfig
) -> dict[str, torch.Tensor]:
    """transformers' `SamModel` (`SamHQModel`) parameter names -> ours; the inverse of
    `to_transformers_state_dict`."""
    state_dict = dict(state_dict)
    tied = state_dict.pop(TRANSFORMERS_TIED_KEY, None)
    if tied is not None:
        shared = state_dict.setdefault("shared_image_embedding.positional_embedding", tied)
        if not torch.equal(tied, shared):
            raise ValueError(
                f"{TRANSFORMERS_TIED_KEY} and shared_image_embedding.positional_embedding must be equal (tied)"
            )
    rules = _transformers_rules(config.mask_decoder_config.iou_head_depth)
    return _rename(state_dict, [(theirs, ours) for ours, theirs in rules])


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------


def transformers_model(config: SamHFConfig) -> TransformersModel:
    """transformers' classes for `config`'s decoder variant.

    Raises:
        ValueError: if transformers has no model with this mask decoder.
    """
    decoder_type = config.mask_decoder_config.decoder_type
    for model in _TRANSFORMERS_MODELS.values():
        if model.decoder_type == decoder_type:
            return model
    raise ValueError(
        f"transformers has no SAM model with mask_decoder_config.decoder_type {decoder_type!r}; save in the sam_hf "
        "or meta format"
    )


def to_transformers_config(config: SamHFConfig) -> SamConfig | SamHQConfig:
    """The transformers config describing the same network as `config`: a `SamConfig`, or a `SamHQConfig` for
    SAM-HQ's decoder.

    Raises:
        ValueError: if the image encoder is not SAM's ViT (transformers' `SamModel` and `SamHQModel` have no
            other).
    """
    vision, prompt, decoder = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    if not isinstance(vision, SamHFVisionConfig):
        raise ValueError(
            f"the transformers format holds SAM's ViT image encoder only (vision_config.encoder_type 'vit'), "
            f"got {vision.encoder_type!r}; save in the sam_hf or meta format"
        )
    config_class, architecture = transformers_model(config)[:2]
    # SamHQ's decoder names the early feature's channels; SamConfig's decoder takes no such field.
    early = {"vit_dim": vision.intermediate_channels} if config_class is SamHQConfig else {}
    return config_class(
        vision_config={
            "hidden_size": vision.hidden_size,
            "output_channels": vision.output_channels,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "num_channels": vision.num_channels,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "layer_norm_eps": vision.layer_norm_eps,
            "qkv_bias": vision.qkv_bias,
            "mlp_ratio": vision.mlp_ratio,
            "mlp_dim": int(vision.hidden_size * vision.mlp_ratio),
            "use_rel_pos": vision.use_rel_pos,
            "window_size": vision.window_size,
            "global_attn_indexes": list(vision.global_attn_indexes),
            "num_pos_feats": prompt.hidden_size // 2,
        },
        prompt_encoder_config={
            "hidden_size": prompt.hidden_size,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "mask_input_channels": prompt.mask_input_channels,
        },
        mask_decoder_config={
            "hidden_size": decoder.hidden_size,
            "mlp_dim": decoder.mlp_dim,
            "num_hidden_layers": decoder.num_hidden_layers,
            "num_attention_heads": decoder.num_attention_heads,
            "attention_downsample_rate": decoder.attention_downsample_rate,
            "num_multimask_outputs": decoder.num_multimask_outputs,
            "iou_head_depth": decoder.iou_head_depth,
            "iou_head_hidden_dim": decoder.iou_head_hidden_dim,
            **early,
        },
        initializer_range=config.initializer_range,
        architectures=[architecture],
    )


def from_transformers_config(config: SamConfig | SamHQConfig | dict[str, Any]) -> SamHFConfig:
    """Our config for a transformers `SamConfig` or `SamHQConfig` (or its dict, as in config.json; its
    `model_type` tells which, "sam" when absent).

    Raises:
        ValueError: if the transformers config describes something SAM's architecture cannot represent
            (another activation, no absolute positions, mismatched sizes), or its model type is neither.
    """
    if isinstance(config, dict):
        model_type = config.get("model_type") or "sam"
        if model_type not in _TRANSFORMERS_MODELS:
            raise ValueError(f"model_type must be one of {TRANSFORMERS_MODEL_TYPES}, got {model_type!r}")
        config_class = _TRANSFORMERS_MODELS[model_type].config_class
        config = config_class.from_dict({k: v for k, v in config.items() if k != "model_type"})
    decoder_types = [m.decoder_type for m in _TRANSFORMERS_MODELS.values() if type(config) is m.config_class]
    if not decoder_types:
        raise TypeError(
            f"config must be one of {[m.config_class.__name__ for m in _TRANSFORMERS_MODELS.values()]} or a "
            f"dict, got {type(config).__name__}"
        )
    vision, prompt, decoder = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    problems = [
        f"{section}.{field}={getattr(getattr(config, section), field)!r} (expected {value!r})"
        for section, fields in _TRANSFORMERS_FIXED.items()
        for field, value in fields.items()
        if getattr(getattr(config, section), field, value) != value
    ]
    consistency = {
        "vision_config.num_pos_feats": (vision.num_pos_feats, prompt.hidden_size // 2),
        "prompt_encoder_config.image_size": (prompt.image_size, vision.image_size),
        "prompt_encoder_config.patch_size": (prompt.patch_size, vision.patch_size),
        # SAM-HQ's early feature is the ViT's own width.
        "mask_decoder_config.vit_dim": (getattr(decoder, "vit_dim", vision.hidden_size), vision.hidden_size),
    }
    problems += [
        f"{name}={got!r} (expected {want!r})" for name, (got, want) in consistency.items() if got != want
    ]
    if problems:
        raise ValueError(
            f"this transformers {type(config).__name__} is not a SAM network sam_hf can load: {', '.join(problems)}"
        )
    return SamHFConfig(
        vision_config={
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "num_channels": vision.num_channels,
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "mlp_ratio": vision.mlp_dim / vision.hidden_size,
            "output_channels": vision.output_channels,
            "window_size": vision.window_size,
            "global_attn_indexes": list(vision.global_attn_indexes),
            "qkv_bias": vision.qkv_bias,
            "use_rel_pos": vision.use_rel_pos,
            "layer_norm_eps": vision.layer_norm_eps,
        },
        prompt_encoder_config={
            "hidden_size": prompt.hidden_size,
            "mask_input_channels": prompt.mask_input_channels,
        },
        mask_decoder_config={
            "decoder_type": decoder_types[0],
            "hidden_size": decoder.hidden_size,
            "num_hidden_layers": decoder.num_hidden_layers,
            "num_attention_heads": decoder.num_attention_heads,
            "mlp_dim": decoder.mlp_dim,
            "attention_downsample_rate": decoder.attention_downsample_rate,
            "num_multimask_outputs": decoder.num_multimask_outputs,
            "iou_head_depth": decoder.iou_head_depth,
            "iou_head_hidden_dim": decoder.iou_head_hidden_dim,
        },
        initializer_range=config.initializer_range,
    )


def count_indexed(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of submodules `prefix{n}.` present, checking they are numbered 0..n-1."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if found != set(range(len(found))):
        raise ValueError(f"{prefix}N must be numbered from 0 without gaps, found {sorted(found)}")
    return len(found)


def infer_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> SamHFConfig:
    """Read the architecture of an official-named state dict (Meta's SAM, MobileSAM, SAM-HQ, Light HQ-SAM) from
    its tensor shapes.

    The image encoder is told by the key only its checkpoints have (each registered encoder's `stem_key`),
    which then reads its own section (`config_from_state_dict`); the mask decoder likewise by its `state_key`
    (SAM's when none matches). Every hyperparameter is visible in some shape except the decoder's head count,
    which is SAM's 8, and TinyViT's input size, which is MobileSAM's 1024 (SAM's ViT reveals its own in the
    position table): pass `config=` otherwise.

    Raises:
        ValueError: if tensors SAM always has are missing (the message lists a few keys that were found).
    """

    def shape(name: str) -> tuple[int, ...]:
        if name not in state_dict:
            raise ValueError(
                f"not a SAM state dict: no {name!r}; found {len(state_dict)} tensors, e.g. {sorted(state_dict)[:5]}"
            )
        return tuple(state_dict[name].shape)

    encoders = [cls for cls in image_encoder_classes().values() if cls.stem_key in state_dict]
    if len(encoders) != 1:
        stems = {name: cls.stem_key for name, cls in image_encoder_classes().items()}
        raise ValueError(
            f"not a SAM state dict: one image encoder's stem key must be present, of {stems}; found "
            f"{len(state_dict)} tensors, e.g. {sorted(state_dict)[:5]}"
        )
    decoder_types = [
        name for name, cls in mask_decoder_classes().items() if cls.state_key and cls.state_key in state_dict
    ]
    mask_tokens, decoder_width = shape("mask_decoder.mask_tokens.weight")
    return SamHFConfig(
        vision_config=encoders[0].config_from_state_dict(state_dict, shape),
        prompt_encoder_config={
            "hidden_size": shape("prompt_encoder.no_mask_embed.weight")[1],
            "mask_input_channels": shape("prompt_encoder.mask_downscaling.3.weight")[0],
        },
        mask_decoder_config={
            "decoder_type": decoder_types[0] if decoder_types else SamHFMaskDecoderConfig.decoder_type,
            "hidden_size": decoder_width,
            "num_hidden_layers": count_indexed(state_dict, "mask_decoder.transformer.layers."),
            "num_attention_heads": _META_DECODER_HEADS,
            "mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
            "attention_downsample_rate": decoder_width
            // shape("mask_decoder.transformer.final_attn_token_to_image.q_proj.weight")[0],
            "num_multimask_outputs": mask_tokens - 1,
            "iou_head_depth": count_indexed(state_dict, "mask_decoder.iou_prediction_head.layers."),
            "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
        },
    )
