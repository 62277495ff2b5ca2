"""TinyViT image encoder (MobileSAM): convolutional stem, MBConv stage, windowed-attention stages, SAM's neck.

Input `(batch_size, 3, image_size, image_size)` normalised pixels; output the image embedding
`(batch_size, output_channels, image_size // 16, image_size // 16)` for four stages. Parameter names are
MobileSAM's (`mobile_sam.modeling.TinyViT`), so its checkpoints load without renaming; they are told by the
convolutional stem (`stem_key`). On request it also returns its second stage's output, Light HQ-SAM's early
feature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .checkpoint_conversion import count_indexed
from .common import ImageEncoderBase, are_plain
from .configuration_sam_hf import SamHFTinyViTConfig
from .registry import register_image_encoder

__all__ = ["TinyViT", "TinyViTAttention", "TinyViTBlock"]

# Classes of the ImageNet head MobileSAM's checkpoints carry.
_IMAGENET_CLASSES = 1000


class ConvBN(nn.Sequential):
    """Convolution without bias, then batch norm (`c`, `bn`); in eval mode one convolution with the batch
    norm folded into its weight and bias (a pass over the feature map fewer), when both are the plain modules
    (`common.are_plain`: no hooks, adapters or subclasses)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ):
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.c, self.bn
        if self.training or not are_plain((conv, bn), (nn.Conv2d, nn.BatchNorm2d)):
            return super().forward(x)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (out_channels,)
        weight, bias = conv.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: `(B, 3, S, S)` -> `(B, dim, S/4, S/4)`."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_channels, dim // 2, 3, stride=2), nn.GELU(), ConvBN(dim // 2, dim, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise, 1x1 project, residual; on `(B, C, H, W)`."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1, depthwise 3x3 with `stride`, 1x1: `(B, dim, H, W)` -> `(B, out_dim, H/stride, W/stride)`."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class TinyViTAttention(nn.Module):
    """Pre-norm multi-head attention inside `window x window` windows, with a learned bias per head for each
    `(|row offset|, |column offset|)` between query and key."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))

    def _init_sam_hf_weights(self) -> None:
        init.zeros_(self.attention_biases)

    def _bias(self) -> torch.Tensor:
        """`(heads, window^2, window^2)`: entry `[h, n, m]` is head h's bias for the offset of tokens n and m."""
        rows = torch.arange(self.window, device=self.attention_biases.device).repeat_interleave(self.window)
        cols = torch.arange(self.window, device=self.attention_biases.device).repeat(self.window)
        offsets = (rows[:, None] - rows[None]).abs() * self.window + (cols[:, None] - cols[None]).abs()
        return self.attention_biases[:, offsets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # windows, tokens per window, dim
        # Each head's q, k and v are contiguous in the projection (MobileSAM's layout).
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each (B, heads, N, head_dim)
        # Written out: with an additive bias, CPU `scaled_dot_product_attention` takes a slower masked path.
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1) + self._bias().to(q.dtype)
        out = scores.softmax(dim=-1) @ v  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class TinyViTMlp(nn.Module):
    """Pre-norm MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(GradientCheckpointingLayer):
    """Windowed attention, a depthwise convolution over the grid, an MLP; on `(B, H, W, C)`.

    The grid is zero-padded to whole windows before the attention's norm, so padding tokens take part as keys,
    as in MobileSAM.
    """

    def __init__(self, dim: int, num_heads: int, window: int, config: SamHFTinyViTConfig):
        super().__init__()
        self.window = window
        self.attn = TinyViTAttention(dim, num_heads, window)
        self.mlp = TinyViTMlp(dim, int(dim * config.mlp_ratio))
        self.local_conv = ConvBN(dim, dim, config.local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape  # batch, grid height, grid width, dim
        w = self.window
        pad_h, pad_w = (w - H % w) % w, (w - W % w) % w
        windows = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        windows = windows.view(B, Hp // w, w, Wp // w, w, C).transpose(2, 3).reshape(-1, w * w, C)
        attended = self.attn(windows).view(B, Hp // w, Wp // w, w, w, C).transpose(2, 3)
        x = x + attended.reshape(B, Hp, Wp, C)[:, :H, :W]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """MBConv blocks, then a patch merging; on `(B, C, H, W)`."""

    def __init__(self, dim: int, depth: int, downsample: PatchMerging, config: SamHFTinyViTConfig):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, config.mbconv_expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks, then a patch merging unless it is the last stage; `(B, H, W, C)` in and out."""

    def __init__(self, stage: int, downsample: PatchMerging | None, config: SamHFTinyViTConfig):
        super().__init__()
        dim = config.embed_dims[stage]
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, config.num_heads[stage], config.window_sizes[stage], config)
            for _ in range(config.depths[stage])
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x
        return self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_image_encoder("tiny_vit")
class TinyViT(ImageEncoderBase):
    stem_key = "image_encoder.patch_embed.seq.0.c.weight"

    def __init__(self, config: SamHFTinyViTConfig):
        super().__init__(config)
        dims, stages = config.embed_dims, len(config.depths)
        self.patch_embed = PatchEmbed(config.num_channels, dims[0])
        merges = [
            PatchMerging(dims[i], dims[i + 1], stride=1 if i == stages - 2 else 2) for i in range(stages - 1)
        ]
        self.layers = nn.ModuleList(
            [ConvStage(dims[0], config.depths[0], merges[0], config)]
            + [AttentionStage(i, merges[i] if i < stages - 1 else None, config) for i in range(1, stages)]
        )
        # TinyViT's ImageNet classifier: SAM never runs it, but MobileSAM's checkpoints hold it, and keeping it
        # lets them load strictly and convert back bit-exactly.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], _IMAGENET_CLASSES)
        self.neck = self.build_neck(dims[-1])

    def forward(
        self, pixel_values: torch.Tensor, return_intermediate: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`(batch_size, 3, image_size, image_size)` -> image embedding `(batch_size, output_channels, grid,
        grid)`; with `return_intermediate`, also the second stage's output `(batch_size, grid, grid,
        embed_dims[2])` (Light HQ-SAM's early feature, its official `interm_embeddings[0]`)."""
        self.check_pixel_values(pixel_values)
        # Channels last from the stem on: the convolutions run several times faster on that layout on CPU,
        # and the attention stages' (B, H, W, C) is then a view.
        pixels = pixel_values.contiguous(memory_format=torch.channels_last)
        x = self.layers[0](self.patch_embed(pixels)).permute(0, 2, 3, 1)  # (B, H, W, C)
        intermediate = None
        for index, stage in enumerate(self.layers[1:], start=1):
            x = stage(x)
            if index == 1:
                intermediate = x
        embeddings = self.neck(x.permute(0, 3, 1, 2))
        return (embeddings, intermediate) if return_intermediate else embeddings

    @classmethod
    def config_from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], shape: Callable[[str], tuple[int, ...]]
    ) -> dict[str, Any]:
        """The vision section of an official MobileSAM state dict: stage widths from the stem and the patch
        mergings, heads and windows from the attention bias tables `(heads, window^2)`; the first
        (convolutional) stage has neither and keeps the defaults' entries. The input size is not in any
        shape: MobileSAM's 1024."""
        stages = count_indexed(state_dict, "image_encoder.layers.")
        if stages < 2:
            raise ValueError(
                f"a TinyViT state dict must have at least 2 stages (image_encoder.layers.N), got {stages}"
            )
        dims = [shape("image_encoder.patch_embed.seq.2.c.weight")[0]]
        dims += [shape(f"image_encoder.layers.{i}.downsample.conv1.c.weight")[0] for i in range(stages - 1)]
        biases = [shape(f"image_encoder.layers.{i}.blocks.0.attn.attention_biases") for i in range(1, stages)]
        defaults = SamHFTinyViTConfig()
        return {
            "encoder_type": SamHFTinyViTConfig.encoder_type,
            "num_channels": shape(cls.stem_key)[1],
            "embed_dims": dims,
            "depths": [count_indexed(state_dict, f"image_encoder.layers.{i}.blocks.") for i in range(stages)],
            "num_heads": [defaults.num_heads[0]] + [heads for heads, _ in biases],
            "window_sizes": [defaults.window_sizes[0]] + [round(offsets**0.5) for _, offsets in biases],
            "mlp_ratio": shape("image_encoder.layers.1.blocks.0.mlp.fc1.weight")[0] / dims[1],
            "mbconv_expand_ratio": shape("image_encoder.layers.0.blocks.0.conv1.c.weight")[0] / dims[0],
            "local_conv_size": shape("image_encoder.layers.1.blocks.0.local_conv.c.weight")[2],
            "output_channels": shape("image_encoder.neck.0.weight")[0],
        }
