"""ViT image encoder: patch embedding, windowed/global blocks with decomposed relative positions, neck.

Input `(batch_size, 3, image_size, image_size)` normalised pixels; output the image embedding
`(batch_size, output_channels, image_size // patch_size, image_size // patch_size)`, and on request the first
global block's output, SAM-HQ's early feature. Official checkpoints are told by `image_encoder.pos_embed`.
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
from .common import ImageEncoderBase, MLPBlock
from .configuration_sam_hf import SamHFVisionConfig
from .registry import register_image_encoder

__all__ = ["ImageEncoderBlock", "ImageEncoderViT"]


def _relative_position_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis of length `size`.

    Args:
        size: number of positions along the axis (queries and keys alike).
        rel_pos: `(num_offsets, head_dim)` learned table; resized linearly if it was trained for another size.

    Returns:
        `(size, size, head_dim)`, entry `[i, j]` embedding the offset `i - j`.
    """
    num_offsets = 2 * size - 1
    if rel_pos.shape[0] != num_offsets:
        rel_pos = F.interpolate(rel_pos.T[None], size=num_offsets, mode="linear")[0].T
    positions = torch.arange(size, device=rel_pos.device)
    return rel_pos[positions[:, None] - positions[None, :] + size - 1]


# Elements of one (queries x keys) score block: small enough to stay in cache, large enough for fast matmuls.
_SCORE_BLOCK_ELEMENTS = 1 << 21
# Below this grid width the bias is folded into the product (a broadcast add over short rows is slow).
_MIN_WIDTH_FOR_BIAS_ADD = 32


def _attention_with_decomposed_positions(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """Softmax attention with SAM's decomposed relative-position bias, one cache-sized score block at a time.

    The bias of query `n` and key `(r, c)` is `rel_h[n, r] + rel_w[n, c]`. On wide grids it is added to each
    score block as the block is computed; on narrow grids (windows) it is folded into the product itself by
    extending queries with their bias rows and keys with the one-hot of their row and column. Either way the
    `(heads, N, N)` bias is never materialised and scores stay in cache; plain matrix products on blocks beat
    the fused SDPA kernels on CPU, which cannot take this bias without a dense mask.

    Args:
        q, k, v: `(batch_heads, N, head_dim)`; `q` already scaled.
        rel_h: `(batch_heads, N, H)` and rel_w: `(batch_heads, N, W)` with `N == H * W` (keys in row-major order).

    Returns:
        `(batch_heads, N, head_dim)`.
    """
    BH, N, _ = q.shape
    H, W = rel_h.shape[-1], rel_w.shape[-1]
    add_bias = W >= _MIN_WIDTH_FOR_BIAS_ADD
    if not add_bias:
        key_row = torch.eye(H, dtype=q.dtype, device=q.device).repeat_interleave(W, dim=0)  # (N, H)
        key_col = torch.eye(W, dtype=q.dtype, device=q.device).repeat(H, 1)  # (N, W)
        q = torch.cat([q, rel_h, rel_w], dim=-1)
        k = torch.cat([k, key_row.expand(BH, N, H), key_col.expand(BH, N, W)], dim=-1)
    k_t = k.transpose(1, 2).contiguous()
    heads_step = max(1, _SCORE_BLOCK_ELEMENTS // (N * N))
    query_step = min(N, max(1, _SCORE_BLOCK_ELEMENTS // N))
    outputs = []
    for h0 in range(0, BH, heads_step):
        h1 = min(BH, h0 + heads_step)
        rows = []
        for n0 in range(0, N, query_step):
            n1 = min(N, n0 + query_step)
            scores = torch.matmul(q[h0:h1, n0:n1], k_t[h0:h1])  # (h, n, N)
            if add_bias:
                grid_scores = scores.view(h1 - h0, n1 - n0, H, W)
                bias_h, bias_w = rel_h[h0:h1, n0:n1, :, None], rel_w[h0:h1, n0:n1, None, :]
                if torch.jit.is_tracing():  # ONNX export: a traced in-place add on a view is lost
                    scores = (grid_scores + bias_h + bias_w).view_as(scores)
                else:
                    grid_scores.add_(bias_h).add_(bias_w)
            rows.append(torch.matmul(torch.softmax(scores, dim=-1), v[h0:h1]))
        outputs.append(torch.cat(rows, dim=1) if len(rows) > 1 else rows[0])
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


class Attention(nn.Module):
    """Multi-head self-attention over a `(batch, height, width, dim)` grid.

    With relative positions, the decomposed term `q . R_h[row_q - row_k] + q . R_w[col_q - col_k]` is added
    block by block inside the attention (`_attention_with_decomposed_positions`); without, it is plain SDPA.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, grid_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))

    def _init_sam_hf_weights(self) -> None:
        if self.use_rel_pos:
            init.zeros_(self.rel_pos_h)
            init.zeros_(self.rel_pos_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape  # batch (or windows), grid height, grid width, dim
        N, D = H * W, self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, N, D).unbind(0)  # each (B * heads, N, D)
        if self.use_rel_pos:
            grid_q = q.view(-1, H, W, D)
            table_h = _relative_position_table(H, self.rel_pos_h).to(q.dtype)  # (H, H, D)
            table_w = _relative_position_table(W, self.rel_pos_w).to(q.dtype)  # (W, W, D)
            rel_h = torch.einsum("bhwd,hkd->bhwk", grid_q, table_h).reshape(-1, N, H)
            rel_w = torch.einsum("bhwd,wkd->bhwk", grid_q, table_w).reshape(-1, N, W)
            out = _attention_with_decomposed_positions(q * D**-0.5, k, v, rel_h, rel_w)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.view(B, self.num_heads, H, W, D).permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return self.proj(out)


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`(B, H, W, C)` -> `(B * num_windows, window, window, C)`, zero-padding H and W up to multiples of `window`."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def _window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `_window_partition`: back to `(B, H, W, C)` with the padding removed."""
    Hp, Wp = padded
    H, W = size
    B = windows.shape[0] // (Hp * Wp // window // window)
    x = windows.view(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :]


class ImageEncoderBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block; attends within windows unless `window_size == 0` (global)."""

    def __init__(self, config: SamHFVisionConfig, window_size: int):
        super().__init__()
        dim = config.hidden_size
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(
            dim,
            config.num_attention_heads,
            config.qkv_bias,
            config.use_rel_pos,
            grid_size=window_size if window_size > 0 else config.embedding_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = x.shape[1:3]
            x, padded = _window_partition(x, self.window_size)
            x = _window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: SamHFVisionConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


@register_image_encoder("vit")
class ImageEncoderViT(ImageEncoderBase):
    stem_key = "image_encoder.pos_embed"

    def __init__(self, config: SamHFVisionConfig):
        super().__init__(config)
        grid = config.embedding_size
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.hidden_size))
        self.blocks = nn.ModuleList(
            ImageEncoderBlock(config, 0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)
        )
        self.neck = self.build_neck(config.hidden_size)

    def forward(
        self, pixel_values: torch.Tensor, return_intermediate: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """`(batch_size, 3, image_size, image_size)` -> image embedding `(batch_size, output_channels, grid,
        grid)`; with `return_intermediate`, also the output of the first global-attention block `(batch_size,
        grid, grid, hidden_size)` (SAM-HQ's early feature, its official `interm_embeddings[0]`)."""
        self.check_pixel_values(pixel_values)
        x = self.patch_embed(pixel_values) + self.pos_embed
        intermediate = None
        for block in self.blocks:
            x = block(x)
            if intermediate is None and block.window_size == 0:
                intermediate = x
        embeddings = self.neck(x.permute(0, 3, 1, 2))
        return (embeddings, intermediate) if return_intermediate else embeddings

    def _init_sam_hf_weights(self) -> None:
        init.zeros_(self.pos_embed)

    @classmethod
    def config_from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], shape: Callable[[str], tuple[int, ...]]
    ) -> dict[str, Any]:
        """The vision section of an official SAM state dict: width from the patch embedding, depth from the
        block count, heads from the relative-position tables' head dimension, global blocks from tables
        spanning the whole grid (`2 * grid - 1` rows).

        Raises:
            ValueError: without relative-position tables (the head count is then unknown: pass `config=`).
        """
        hidden, channels, patch, _ = shape("image_encoder.patch_embed.proj.weight")
        grid = shape("image_encoder.pos_embed")[1]
        depth = count_indexed(state_dict, "image_encoder.blocks.")
        if "image_encoder.blocks.0.attn.rel_pos_h" not in state_dict:
            raise ValueError(
                "a state dict without relative position tables does not reveal its head count; pass config="
            )
        rows = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
        windowed_rows = [r for r in rows if r != 2 * grid - 1]
        vision = {
            "encoder_type": SamHFVisionConfig.encoder_type,
            "image_size": grid * patch,
            "patch_size": patch,
            "num_channels": channels,
            "hidden_size": hidden,
            "num_hidden_layers": depth,
            "num_attention_heads": hidden // shape("image_encoder.blocks.0.attn.rel_pos_h")[1],
            "mlp_ratio": shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / hidden,
            "output_channels": shape("image_encoder.neck.0.weight")[0],
            "global_attn_indexes": [i for i, r in enumerate(rows) if r == 2 * grid - 1],
            "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state_dict,
        }
        if windowed_rows:
            vision["window_size"] = (windowed_rows[0] + 1) // 2
        return vision
