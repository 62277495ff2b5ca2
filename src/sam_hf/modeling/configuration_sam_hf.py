"""Configuration of SamHF: a composite of the image encoder, prompt encoder and mask decoder sections.

The image encoder section is chosen by its `encoder_type` (`VISION_CONFIG_CLASSES`): SAM's ViT ("vit") or
MobileSAM's TinyViT ("tiny_vit"); a config.json without it is a ViT. The mask decoder section is chosen by its
`decoder_type` (`MASK_DECODER_CONFIG_CLASSES`): SAM's ("sam", the default) or SAM-HQ's ("hq"). The SAM
variants (ViT-B/L/H), MobileSAM (`vit_t`), SAM-HQ (`sam_hq_vit_b/l/h`, and Light HQ-SAM `sam_hq_vit_tiny`)
and tiny test models live in one presets table, `SAM_HF_PRESETS`; `SamHFConfig.from_preset(name)` builds a
config from it. Fields the architecture fixes (the image embedding grid, the low-resolution mask
size) are derived in `__init__`, never stored twice.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

__all__ = [
    "SAM_HF_PRESETS",
    "MASK_DECODER_CONFIG_CLASSES",
    "SamHFConfig",
    "SamHFHQMaskDecoderConfig",
    "SamHFMaskDecoderConfig",
    "SamHFPromptEncoderConfig",
    "SamHFTinyViTConfig",
    "SamHFVisionConfig",
    "VISION_CONFIG_CLASSES",
]


class SamHFVisionConfig(PretrainedConfig):
    """ViT image encoder with windowed and global attention and a convolutional neck.

    Args:
        image_size: side of the square input the encoder sees (the processor pads to it).
        patch_size: side of a patch; the embedding grid is `image_size // patch_size` on each side.
        hidden_size: ViT width.
        num_hidden_layers: ViT depth.
        num_attention_heads: heads per ViT block.
        mlp_ratio: MLP width as a multiple of `hidden_size`.
        output_channels: channels of the image embedding the neck produces.
        window_size: side of the attention windows in non-global blocks.
        global_attn_indexes: indices of the blocks that attend over the whole grid.
        qkv_bias: whether the qkv projection has a bias.
        use_rel_pos: decomposed relative position terms in attention (as in SAM).
        layer_norm_eps: epsilon of every LayerNorm in the encoder.
    """

    model_type = "sam_hf_vision"
    base_config_key = "vision_config"
    encoder_type = "vit"

    def __init__(
        self,
        image_size: int = 1024,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        output_channels: int = 256,
        window_size: int = 14,
        global_attn_indexes: list[int] | tuple[int, ...] = (2, 5, 8, 11),
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        layer_norm_eps: float = 1e-6,
        **kwargs: Any,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.output_channels = output_channels
        self.window_size = window_size
        self.global_attn_indexes = list(global_attn_indexes)
        self.qkv_bias = qkv_bias
        self.use_rel_pos = use_rel_pos
        self.layer_norm_eps = layer_norm_eps
        super().__init__(**kwargs)
        self.encoder_type = type(self).encoder_type  # saved in config.json, which names the section's class
        if image_size % patch_size:
            raise ValueError(
                f"image_size must be a multiple of patch_size, got {image_size} and {patch_size}"
            )
        if any(not 0 <= i < num_hidden_layers for i in self.global_attn_indexes):
            raise ValueError(
                f"global_attn_indexes must index blocks in [0, {num_hidden_layers}), got {self.global_attn_indexes}"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for SAM)."""
        return self.image_size // self.patch_size

    @property
    def intermediate_channels(self) -> int:
        """Channels of the encoder's early feature (SAM-HQ's `interm_embeddings[0]`: the output of the first
        global-attention block, `(batch_size, embedding_size, embedding_size, hidden_size)`)."""
        return self.hidden_size


class SamHFTinyViTConfig(PretrainedConfig):
    """TinyViT image encoder (MobileSAM): a convolutional stem and stage, then windowed-attention stages, and
    SAM's convolutional neck.

    The stem divides the input side by 4; each stage but the last ends in a patch merging that halves the grid,
    except the merging before the last stage, which keeps it (as MobileSAM's), so four stages give an image
    embedding grid of `image_size // 16`.

    Args:
        image_size: side of the square input the encoder sees (the processor pads to it).
        embed_dims: channels of each stage.
        depths: blocks of each stage (the first stage's are MBConv blocks, the others' attention blocks).
        num_heads: attention heads of each stage (the first stage's entry is unused).
        window_sizes: side of the attention windows of each stage (the first stage's entry is unused).
        mlp_ratio: MLP width as a multiple of a stage's channels.
        mbconv_expand_ratio: width of the MBConv blocks' inverted bottleneck as a multiple of their channels.
        local_conv_size: kernel of the depthwise convolution between attention and MLP.
        output_channels: channels of the image embedding the neck produces.
    """

    model_type = "sam_hf_tiny_vit"
    base_config_key = "vision_config"
    encoder_type = "tiny_vit"

    def __init__(
        self,
        image_size: int = 1024,
        num_channels: int = 3,
        embed_dims: list[int] | tuple[int, ...] = (64, 128, 160, 320),
        depths: list[int] | tuple[int, ...] = (2, 2, 6, 2),
        num_heads: list[int] | tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: list[int] | tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        output_channels: int = 256,
        **kwargs: Any,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.window_sizes = list(window_sizes)
        self.mlp_ratio = mlp_ratio
        self.mbconv_expand_ratio = mbconv_expand_ratio
        self.local_conv_size = local_conv_size
        self.output_channels = output_channels
        super().__init__(**kwargs)
        self.encoder_type = type(self).encoder_type
        lengths = {
            name: len(getattr(self, name)) for name in ("embed_dims", "depths", "num_heads", "window_sizes")
        }
        if len(set(lengths.values())) != 1 or lengths["depths"] < 2:
            raise ValueError(
                f"embed_dims, depths, num_heads and window_sizes must give one entry per stage (at least 2), "
                f"got lengths {lengths}"
            )
        if image_size % self.stride:
            raise ValueError(f"image_size must be a multiple of {self.stride}, got {image_size}")
        if any(dim % heads for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:], strict=True)):
            raise ValueError(
                f"each attention stage's embed_dims must be a multiple of its num_heads, got "
                f"{self.embed_dims[1:]} and {self.num_heads[1:]}"
            )

    @property
    def stride(self) -> int:
        """Input pixels per image-embedding cell: 4 for the stem, 2 per patch merging but the last."""
        return 4 * 2 ** (len(self.depths) - 2)

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for MobileSAM)."""
        return self.image_size // self.stride

    @property
    def intermediate_channels(self) -> int:
        """Channels of the encoder's early feature (Light HQ-SAM's `interm_embeddings[0]`: the output of the
        second stage, after its patch merging, `(batch_size, embedding_size, embedding_size, embed_dims[2])`)."""
        return self.embed_dims[2] if len(self.embed_dims) > 2 else self.embed_dims[-1]


# encoder_type -> the class of its vision config section; the encoder itself is in `registry`.
VISION_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "vit": SamHFVisionConfig,
    "tiny_vit": SamHFTinyViTConfig,
}


class SamHFPromptEncoderConfig(PretrainedConfig):
    """Prompt encoder: random-Fourier point/box embeddings and a convolutional dense-mask embedding.

    Args:
        hidden_size: width of prompt tokens; must equal the image embedding's channels.
        mask_input_channels: channels of the mask downscaling network's middle layer.
    """

    model_type = "sam_hf_prompt_encoder"
    base_config_key = "prompt_encoder_config"

    def __init__(self, hidden_size: int = 256, mask_input_channels: int = 16, **kwargs: Any):
        self.hidden_size = hidden_size
        self.mask_input_channels = mask_input_channels
        super().__init__(**kwargs)


class SamHFMaskDecoderConfig(PretrainedConfig):
    """SAM's mask decoder: a two-way transformer, multimask output and an IoU head.

    Args:
        hidden_size: width of tokens and of the image embedding inside the decoder.
        num_hidden_layers: two-way attention blocks.
        num_attention_heads: heads of every decoder attention.
        mlp_dim: MLP width inside each two-way block.
        attention_downsample_rate: internal width reduction of the cross attentions.
        num_multimask_outputs: masks predicted for an ambiguous prompt (one more is the single-mask output).
        iou_head_depth: layers of the IoU prediction MLP.
        iou_head_hidden_dim: width of the IoU prediction MLP.
    """

    model_type = "sam_hf_mask_decoder"
    base_config_key = "mask_decoder_config"
    decoder_type = "sam"

    def __init__(
        self,
        hidden_size: int = 256,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        **kwargs: Any,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_dim = mlp_dim
        self.attention_downsample_rate = attention_downsample_rate
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_head_depth = iou_head_depth
        self.iou_head_hidden_dim = iou_head_hidden_dim
        super().__init__(**kwargs)
        self.decoder_type = type(self).decoder_type  # saved in config.json, which names the section's class


class SamHFHQMaskDecoderConfig(SamHFMaskDecoderConfig):
    """SAM-HQ's mask decoder (Ke et al., "Segment Anything in High Quality", NeurIPS 2023): SAM's decoder plus a
    learnable HQ output token whose mask is predicted from SAM's upscaled features fused with the image
    embedding and the image encoder's early feature. Same fields as `SamHFMaskDecoderConfig`; the early
    feature's channels are the vision section's `intermediate_channels`.
    """

    model_type = "sam_hf_hq_mask_decoder"
    decoder_type = "hq"

    def __init__(self, **kwargs: Any):  # transformers writes a dataclass __init__ for a config without one
        super().__init__(**kwargs)


# decoder_type -> the class of its mask decoder config section; the decoder itself is in `registry`.
MASK_DECODER_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "sam": SamHFMaskDecoderConfig,
    "hq": SamHFHQMaskDecoderConfig,
}


_SAM_DECODER = {"hidden_size": 256, "num_attention_heads": 8, "mlp_dim": 2048}
_HQ_DECODER = {**_SAM_DECODER, "decoder_type": "hq"}
_VIT_B = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "global_attn_indexes": [2, 5, 8, 11],
}
_VIT_L = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "global_attn_indexes": [5, 11, 17, 23],
}
_VIT_H = {
    "hidden_size": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "global_attn_indexes": [7, 15, 23, 31],
}
_TINY_VIT_5M = {
    "encoder_type": "tiny_vit",
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
}
_TEST_VIT = {
    "image_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "output_channels": 32,
    "window_size": 3,
    "global_attn_indexes": [1],
}
_TEST_TINY_VIT = {
    "encoder_type": "tiny_vit",
    "image_size": 128,
    "embed_dims": [16, 24, 32, 32],
    "depths": [1, 1, 2, 1],
    "num_heads": [1, 2, 2, 2],
    "window_sizes": [7, 7, 3, 7],
    "output_channels": 32,
}
_TEST_PROMPT = {"hidden_size": 32, "mask_input_channels": 4}
_TEST_DECODER = {"hidden_size": 32, "num_attention_heads": 2, "mlp_dim": 64, "iou_head_hidden_dim": 32}

# name: (vision section, prompt-encoder section, mask-decoder section)
SAM_HF_PRESETS: dict[str, tuple[dict, dict, dict]] = {
    "vit_b": (_VIT_B, {"hidden_size": 256}, _SAM_DECODER),
    "vit_l": (_VIT_L, {"hidden_size": 256}, _SAM_DECODER),
    "vit_h": (_VIT_H, {"hidden_size": 256}, _SAM_DECODER),
    # MobileSAM: TinyViT-5M in front of SAM's prompt encoder and mask decoder.
    "vit_t": (_TINY_VIT_5M, {"hidden_size": 256}, _SAM_DECODER),
    # SAM-HQ: SAM's encoders with the HQ decoder; Light HQ-SAM: MobileSAM's TinyViT with it.
    "sam_hq_vit_b": (_VIT_B, {"hidden_size": 256}, _HQ_DECODER),
    "sam_hq_vit_l": (_VIT_L, {"hidden_size": 256}, _HQ_DECODER),
    "sam_hq_vit_h": (_VIT_H, {"hidden_size": 256}, _HQ_DECODER),
    "sam_hq_vit_tiny": (_TINY_VIT_5M, {"hidden_size": 256}, _HQ_DECODER),
    # Few-hundred-kilobyte models with each variant's exact structure, for tests.
    "tiny": (_TEST_VIT, _TEST_PROMPT, _TEST_DECODER),
    "tiny_vit_t": (_TEST_TINY_VIT, _TEST_PROMPT, _TEST_DECODER),
    "tiny_hq": (_TEST_VIT, _TEST_PROMPT, {**_TEST_DECODER, "decoder_type": "hq"}),
    "tiny_vit_t_hq": (_TEST_TINY_VIT, _TEST_PROMPT, {**_TEST_DECODER, "decoder_type": "hq"}),
    # The shipped sam-hf-tiny (trained on procedural shapes by training/pretrain_tiny.py): a 128 px input,
    # 8 px patches (a 16x16 grid, 64x64 low-resolution masks), a 6-block ViT and a 128-wide decoder.
    "sam_hf_tiny": (
        {
            "image_size": 128,
            "patch_size": 8,
            "hidden_size": 160,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "output_channels": 128,
            "window_size": 8,
            "global_attn_indexes": [2, 5],
        },
        {"hidden_size": 128, "mask_input_channels": 16},
        {"hidden_size": 128, "num_attention_heads": 8, "mlp_dim": 512, "iou_head_hidden_dim": 128},
    ),
}


class SamHFConfig(PretrainedConfig):
    """Configuration of `SamHFModel`.

    Args:
        vision_config: image encoder section (one of `VISION_CONFIG_CLASSES`, or its dict, whose
            `encoder_type` picks the class: "vit" when absent).
        prompt_encoder_config: prompt encoder section (`SamHFPromptEncoderConfig` or its dict).
        mask_decoder_config: mask decoder section (one of `MASK_DECODER_CONFIG_CLASSES`, or its dict, whose
            `decoder_type` picks the class: "sam" when absent).
        initializer_range: std of the truncated-normal init of linear layers when training from scratch.

    Derived (not stored): `image_size` (the encoder's input side), `image_embedding_size` (64 for SAM) and
    `mask_size` (4x that: 256), the side of the low-resolution mask logits the decoder predicts and accepts as
    `input_masks`. Code above the model reads these, never the encoder section's own fields.
    """

    model_type = "sam_hf"
    sub_configs = {
        "vision_config": SamHFVisionConfig,
        "prompt_encoder_config": SamHFPromptEncoderConfig,
        "mask_decoder_config": SamHFMaskDecoderConfig,
    }
    # True once `import sam_hf` has installed its "mask-generation" pipeline: a saved config's `custom_pipelines`
    # (that pipeline saved as remote code, for where sam_hf is absent) is then dropped, as transformers' `pipeline`
    # demands `trust_remote_code=True` for every task a config names there. A copy of this class loaded as remote
    # code keeps it.
    pipelines_registered: ClassVar[bool] = False

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        prompt_encoder_config: SamHFPromptEncoderConfig | dict | None = None,
        mask_decoder_config: SamHFMaskDecoderConfig | dict | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.vision_config = _typed_section(
            VISION_CONFIG_CLASSES, "vision_config.encoder_type", vision_config
        )
        self.prompt_encoder_config = _as_section(SamHFPromptEncoderConfig, prompt_encoder_config)
        self.mask_decoder_config = _typed_section(
            MASK_DECODER_CONFIG_CLASSES, "mask_decoder_config.decoder_type", mask_decoder_config
        )
        self.initializer_range = initializer_range
        if self.pipelines_registered:
            kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)
        widths = {
            "vision_config.output_channels": self.vision_config.output_channels,
            "prompt_encoder_config.hidden_size": self.prompt_encoder_config.hidden_size,
            "mask_decoder_config.hidden_size": self.mask_decoder_config.hidden_size,
        }
        if len(set(widths.values())) != 1:
            raise ValueError(f"SamHFConfig sections must share one embedding width, got {widths}")

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def image_embedding_size(self) -> int:
        return self.vision_config.embedding_size

    @property
    def mask_size(self) -> int:
        return 4 * self.vision_config.embedding_size

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> SamHFConfig:
        """Build the config of a named variant: one of `SAM_HF_PRESETS` (`vit_b`, `vit_l`, `vit_h`, `vit_t`,
        `sam_hq_vit_b`, `sam_hq_vit_l`, `sam_hq_vit_h`, `sam_hq_vit_tiny`, `sam_hf_tiny` and the test models
        `tiny`, `tiny_vit_t`, `tiny_hq`, `tiny_vit_t_hq`)."""
        if name not in SAM_HF_PRESETS:
            raise ValueError(f"preset must be one of {sorted(SAM_HF_PRESETS)}, got {name!r}")
        vision, prompt, decoder = SAM_HF_PRESETS[name]
        return cls(
            vision_config=dict(vision),
            prompt_encoder_config=dict(prompt),
            mask_decoder_config=dict(decoder),
            **kwargs,
        )


def _typed_section(
    classes: dict[str, type[PretrainedConfig]], field: str, value: PretrainedConfig | dict | None
) -> PretrainedConfig:
    """The section of the class its type field (`encoder_type`, `decoder_type`) names; absent: the first."""
    key = field.rsplit(".", 1)[1]
    if isinstance(value, tuple(classes.values())):
        return value
    kind = value.get(key, next(iter(classes))) if isinstance(value, dict) else next(iter(classes))
    if kind not in classes:
        raise ValueError(f"{field} must be one of {sorted(classes)}, got {kind!r}")
    return _as_section(classes[kind], value)


def _as_section(
    section_class: type[PretrainedConfig], value: PretrainedConfig | dict | None
) -> PretrainedConfig:
    if value is None:
        return section_class()
    if isinstance(value, dict):
        skipped = ("model_type", "encoder_type", "decoder_type")
        return section_class(**{k: v for k, v in value.items() if k not in skipped})
    if isinstance(value, section_class):
        return value
    raise TypeError(f"expected {section_class.__name__}, a dict or None, got {type(value).__name__}")
