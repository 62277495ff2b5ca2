"""Mask decoder: two-way transformer over prompt and image tokens, upscaling, hypernetwork mask heads, IoU head."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .configuration_sam_hf import SamHFMaskDecoderConfig
from .transformer import TwoWayTransformer

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    def __init__(self, config: SamHFMaskDecoderConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(
            config.num_hidden_layers,
            dim,
            config.num_attention_heads,
            config.mlp_dim,
            config.attention_downsample_rate,
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for `B` prompt groups.

        Args:
            image_embeddings: `(B, C, h, w)`, one per prompt group (already repeated per prompt).
            image_pe: `(1, C, h, w)` positional encoding of the grid.
            sparse: `(B, T, C)` prompt tokens; token_mask `(B, T)`, False for padding tokens (None: all valid).
            dense: `(B, C, h, w)` dense prompt embeddings.
            multimask_output: return the 3 ambiguity-aware masks instead of the single one.

        Returns:
            mask logits `(B, M, 4h, 4w)` and IoU predictions `(B, M)`, M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse, token_mask, dense)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` before choosing: every mask head's output, the single-mask head first.

        Returns:
            mask logits `(B, num_mask_tokens, 4h, 4w)` and IoU predictions `(B, num_mask_tokens)`
            (num_mask_tokens = 4 for SAM; index 0 is what `multimask_output=False` returns).
        """
        B = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).to(sparse.dtype)
        tokens = torch.cat([output_tokens.expand(B, -1, -1), sparse], dim=1)
        if token_mask is not None:
            token_mask = torch.cat([token_mask.new_ones(B, output_tokens.shape[0]), token_mask], dim=1)
        src = image_embeddings + dense
        _, C, h, w = src.shape
        hs, src = self.transformer(src, image_pe.expand(B, -1, -1, -1), tokens, token_mask)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(B, C, h, w))  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1
        )
        masks = (hyper_in @ upscaled.flatten(2)).reshape(B, -1, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(iou_token_out)
