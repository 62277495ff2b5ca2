"""Prompt encoder: sparse tokens for points and box corners, a dense embedding for mask prompts.

Point labels (one convention everywhere in the package):
    1 foreground point, 0 background point, -1 "not a point" (SAM's padding token, a real token),
    2 / 3 top-left / bottom-right box corner, -10 padding that is masked out of attention entirely.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d
from .configuration_sam_hf import SamHFPromptEncoderConfig

__all__ = ["PAD_LABEL", "PositionEmbeddingRandom", "PromptEncoder"]

PAD_LABEL = -10
NOT_A_POINT_LABEL = -1


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of normalised `(x, y)` coordinates."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """`(..., 2)` coordinates in [0, 1] -> `(..., 2 * num_pos_feats)`."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of the centres of a `size x size` grid: `(2 * num_pos_feats, size, size)`."""
        matrix = self.positional_encoding_gaussian_matrix
        centres = (torch.arange(size, device=matrix.device, dtype=matrix.dtype) + 0.5) / size
        xy = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)  # (size, size, 2) as (x, y)
        return self._encode(xy).permute(2, 0, 1)

    def forward(self, coords: torch.Tensor, image_size: int) -> torch.Tensor:
        """Encode `(..., 2)` XY pixel coordinates in the `image_size x image_size` model frame."""
        return self._encode(coords / image_size)


class PromptEncoder(nn.Module):
    def __init__(self, config: SamHFPromptEncoderConfig, image_embedding_size: int, image_size: int):
        super().__init__()
        dim = config.hidden_size
        self.embed_dim = dim
        self.image_embedding_size = image_embedding_size
        self.image_size = image_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        mid = config.mask_input_channels
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mid // 4, kernel_size=2, stride=2),
            LayerNorm2d(mid // 4),
            nn.GELU(),
            nn.Conv2d(mid // 4, mid, kernel_size=2, stride=2),
            LayerNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: `(1, dim, grid, grid)`."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`(..., N, 2)` XY model-frame points and `(..., N)` labels -> `(..., N, dim)` tokens."""
        tokens = self.pe_layer(points + 0.5, self.image_size)  # +0.5: centre of the pixel
        labels = labels[..., None]
        learned = torch.stack([e.weight[0] for e in self.point_embeddings])  # (4, dim)
        tokens = torch.where(labels < 0, torch.zeros_like(tokens), tokens)
        tokens = tokens + torch.where(labels == NOT_A_POINT_LABEL, self.not_a_point_embed.weight[0], 0.0)
        for value in range(4):
            tokens = tokens + torch.where(labels == value, learned[value], 0.0)
        return tokens

    def forward(
        self,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed the prompts of `batch_size` prompt groups (images x prompts, flattened).

        Args:
            points: `(batch_size, num_points, 2)` XY in the model frame, or None.
            labels: `(batch_size, num_points)` int64 labels (see module docstring), or None.
            boxes: `(batch_size, 4)` XYXY in the model frame (a NaN row: this prompt has no box), or None.
            masks: `(batch_size, 1, mask_size, mask_size)` low-resolution mask logits, or None.

        Returns:
            sparse tokens `(batch_size, num_tokens, dim)`, their attention mask `(batch_size, num_tokens)`
            (False for padding), and dense embeddings `(batch_size, dim, grid, grid)`.
        """
        parts, part_labels = [], []
        if points is not None:
            parts.append(points)
            part_labels.append(labels)
        if boxes is not None:
            # A NaN box marks a prompt without one, so prompts with and without boxes can share a batch.
            has_box = ~torch.isnan(boxes).any(dim=-1, keepdim=True)  # (batch_size, 1)
            if points is not None:  # SAM follows points with a "not a point" token when no box comes after
                parts.append(points.new_zeros(batch_size, 1, 2))
                part_labels.append(torch.where(has_box, PAD_LABEL, NOT_A_POINT_LABEL))
            parts.append(torch.nan_to_num(boxes).reshape(batch_size, 2, 2))
            corner = torch.tensor([2, 3], device=boxes.device)
            part_labels.append(torch.where(has_box, corner, PAD_LABEL))
        elif points is not None:
            parts.append(points.new_zeros(batch_size, 1, 2))
            part_labels.append(labels.new_full((batch_size, 1), NOT_A_POINT_LABEL))
        if parts:
            all_labels = torch.cat(part_labels, dim=1)
            sparse = self.embed_points(torch.cat(parts, dim=1), all_labels)
            token_mask = all_labels != PAD_LABEL
        else:
            sparse = self.no_mask_embed.weight.new_zeros(batch_size, 0, self.embed_dim)
            token_mask = torch.ones(batch_size, 0, dtype=torch.bool, device=sparse.device)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            grid = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, grid, grid)
        return sparse, token_mask, dense
