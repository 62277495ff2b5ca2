"""Lossless mapping between SAM's checkpoint conventions: parameter names and configs.

Our parameter names are the official ones (Meta's SAM, MobileSAM's TinyViT, SAM-HQ's decoder), so their state
dicts need no renaming, only their architecture read from tensor shapes (`infer_config_from_state_dict`), the
image encoder and the mask decoder told by their keys. transformers' `SamModel` names differ: one table of prefix
rules (`_transformers_rules`), read left to right or right to left, maps them both ways, so conversion is a
bijection of keys and tensors are never touched: round trips are bit-exact. Files are handled in
`checkpoint_io`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import SamConfig

from .configuration_sam_hf import SamHFConfig, SamHFMaskDecoderConfig, SamHFVisionConfig
from .registry import image_encoder_classes, mask_decoder_classes

__all__ = [
    "TRANSFORMERS_TIED_KEY",
    "count_indexed",
    "from_transformers_config",
    "from_transformers_state_dict",
    "infer_config_from_state_dict",
    "to_transformers_config",
    "to_transformers_state_dict",
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
# SAM's decoder head count: the only hyperparameter tensor shapes do not reveal.
_META_DECODER_HEADS = 8


# ---------------------------------------------------------------------------------------------------------------
# Key renaming: ours (= Meta's) <-> transformers'
# ---------------------------------------------------------------------------------------------------------------


def _mlp_rules(prefix: str, depth: int) -> list[tuple[str, str]]:
    """Our `MLP.layers.0..depth-1` <-> transformers' `proj_in`, `layers.0..depth-3`, `proj_out`."""
    rules = [
        (f"{prefix}layers.0.", f"{prefix}proj_in."),
        (f"{prefix}layers.{depth - 1}.", f"{prefix}proj_out."),
    ]
    rules += [(f"{prefix}layers.{k}.", f"{prefix}layers.{k - 1}.") for k in range(1, depth - 1)]
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
    """Our (= Meta's) parameter names -> transformers' `SamModel` names; tensors are shared, not copied."""
    return _rename(state_dict, _transformers_rules(config.mask_decoder_config.iou_head_depth))


def from_transformers_state_dict(
    state_dict: dict[str, torch.Tensor], config: SamHFConfig
) -> dict[str, torch.Tensor]:
    """transformers' `SamModel` parameter names -> ours; the inverse of `to_transformers_state_dict`."""
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


def to_transformers_config(config: SamHFConfig) -> SamConfig:
    """The transformers `SamConfig` describing the same network as `config`.

    Raises:
        ValueError: if the image encoder is not SAM's ViT (transformers' `SamModel` has no other).
    """
    vision, prompt, decoder = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    if not isinstance(vision, SamHFVisionConfig):
        raise ValueError(
            f"the transformers format holds SAM's ViT image encoder only (vision_config.encoder_type 'vit'), "
            f"got {vision.encoder_type!r}; save in the sam_hf or meta format"
        )
    return SamConfig(
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
        },
        initializer_range=config.initializer_range,
        architectures=["SamModel"],
    )


def from_transformers_config(config: SamConfig | dict[str, Any]) -> SamHFConfig:
    """Our config for a transformers `SamConfig` (or its dict, as in config.json).

    Raises:
        ValueError: if the transformers config describes something SAM's architecture cannot represent
            (another activation, no absolute positions, mismatched sizes).
    """
    if isinstance(config, dict):
        config = SamConfig.from_dict({k: v for k, v in config.items() if k != "model_type"})
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
    }
    problems += [
        f"{name}={got!r} (expected {want!r})" for name, (got, want) in consistency.items() if got != want
    ]
    if problems:
        raise ValueError(
            f"this transformers SamConfig is not a SAM network sam_hf can load: {', '.join(problems)}"
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
