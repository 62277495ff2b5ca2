"""Mask decoders: SAM's (two-way transformer over prompt and image tokens, upscaling, hypernetwork mask heads,
IoU head) and SAM-HQ's (SAM's plus an HQ output token over features fused with the encoder's early layer).

Both take the image features of `batch_size` images as a dict named by their `image_feature_names`
(`image_embeddings` `(batch_size, C, h, w)`; SAM-HQ also `intermediate_embeddings` `(batch_size, h, w, D)`,
D the vision section's `intermediate_channels`) and the prompts of `point_batch_size` prompt groups per image,
flattened to `B = batch_size * point_batch_size` rows. Parameter names are the official ones
(`segment_anything.modeling.MaskDecoder`, `segment_anything_hq.modeling.MaskDecoderHQ`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d, are_plain
from .registry import register_mask_decoder
from .transformer import TwoWayTransformer

__all__ = ["MaskDecoder", "MaskDecoderHQ", "upscale_and_project"]

# (queries (P, T, C), image tokens (P, h * w, C), h, w) -> mask logits (P, M, 4h, 4w), IoU (P, M)
PromptHead = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


# Largest upscaled map block of the many-prompt path in float32 (`MaskDecoder.prompt_head`): cache-sized.
_UPSCALE_BLOCK_BYTES = 2 << 20


def _upscaling(
    in_channels: int, mid_channels: int, out_channels: int, last_activation: bool
) -> nn.Sequential:
    """Two 2x transposed convolutions, LayerNorm2d and GELU between them (and GELU after them, for SAM's
    `output_upscaling`): the 4x upsamplers of SAM's and SAM-HQ's decoders."""
    layers = [
        nn.ConvTranspose2d(in_channels, mid_channels, kernel_size=2, stride=2),
        LayerNorm2d(mid_channels),
        nn.GELU(),
        nn.ConvTranspose2d(mid_channels, out_channels, kernel_size=2, stride=2),
    ]
    return nn.Sequential(*layers, *([nn.GELU()] if last_activation else []))


@register_mask_decoder("sam")
class MaskDecoder(nn.Module):
    """SAM's mask decoder (Kirillov et al., "Segment Anything", 2023): output tokens (IoU, then one single-mask
    and `num_multimask_outputs` ambiguity-aware mask tokens) attend with the prompt tokens to the image
    embedding; each mask token's MLP gives the weights of its mask over the 4x upscaled image tokens."""

    image_feature_names: ClassVar[tuple[str, ...]] = ("image_embeddings",)
    # A state-dict key only this decoder's official checkpoints have (None: the default decoder).
    state_key: ClassVar[str | None] = None
    # Submodules (names under the decoder) that adapter fine-tuning trains in full and saves beside its LoRA
    # adapters (`training.lora.apply_lora`): what a variant's own recipe trains; none for SAM's decoder.
    trained_in_full: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any):
        super().__init__()
        decoder = config.mask_decoder_config
        dim = decoder.hidden_size
        self.num_mask_tokens = decoder.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(
            decoder.num_hidden_layers,
            dim,
            decoder.num_attention_heads,
            decoder.mlp_dim,
            decoder.attention_downsample_rate,
        )
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = _upscaling(dim, dim // 4, dim // 8, last_activation=True)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, decoder.iou_head_hidden_dim, self.num_mask_tokens, decoder.iou_head_depth
        )

    def forward(
        self,
        image_features: dict[str, torch.Tensor],
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
        multimask_output: bool,
        hq_token_only: bool = False,
        point_batch_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for `B = batch_size * point_batch_size` prompt groups.

        Args:
            image_features: per image, as the module docstring names them.
            image_pe: `(1, C, h, w)` positional encoding of the grid.
            sparse: `(B, T, C)` prompt tokens; token_mask `(B, T)`, False for padding tokens (None: all valid).
            dense: `(B, C, h, w)` dense prompt embeddings.
            multimask_output: return the ambiguity-aware masks instead of the single one.
            hq_token_only: SAM-HQ's option; SAM's decoder has no HQ token and raises ValueError when it is set.
            point_batch_size: prompt groups per image (rows `i * point_batch_size ...` belong to image i).

        Returns:
            mask logits `(B, M, 4h, 4w)` and IoU predictions `(B, M)`, M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_features, image_pe, sparse, token_mask, dense, point_batch_size
        )
        return self.select_outputs(masks, iou_pred, multimask_output, hq_token_only)

    def select_outputs(
        self, masks: torch.Tensor, iou_pred: torch.Tensor, multimask_output: bool, hq_token_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_masks`' outputs -> `forward`'s: the multimask outputs, or the single-mask one."""
        _refuse_hq_token_only(hq_token_only)
        selected = _mask_heads(self.num_mask_tokens, multimask_output)
        return masks[:, selected], iou_pred[:, selected]

    def select_single_mask(
        self,
        masks: torch.Tensor,
        iou_pred: torch.Tensor,
        multimask: torch.Tensor,
        hq_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_masks`' outputs -> one mask per prompt group, the choice of multimask output a tensor so
        that a traced graph (the ONNX decoder) makes it from its inputs: with `multimask` (1 or 0, scalar or
        `(B,)`) the best-scored multimask output, else the single-mask one (SAM-HQ: plus its HQ mask, as
        `select_outputs`). Returns mask logits `(B, 1, 4h, 4w)` and IoU predictions `(B, 1)`."""
        _refuse_hq_token_only(hq_token_only)
        return _best_mask(masks, iou_pred, multimask)

    def all_outputs(
        self, masks: torch.Tensor, iou_pred: torch.Tensor, hq_token_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_masks`' outputs -> every head's answer, `(B, num_mask_tokens, 4h, 4w)` and
        `(B, num_mask_tokens)`: the single-mask output, then the multimask ones (SAM-HQ: each plus its HQ
        mask)."""
        _refuse_hq_token_only(hq_token_only)
        return masks, iou_pred

    def output_tokens(self, dtype: torch.dtype) -> torch.Tensor:
        """`(num_output_tokens, C)`: the IoU token, then the mask tokens (SAM-HQ: then its HQ token)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight]).to(dtype)

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
        point_batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer over output + prompt tokens and the image embedding (+ dense prompt).

        Returns:
            output and prompt tokens `(B, T', C)` and image tokens `(B, h * w, C)` after the transformer.
        """
        B = sparse.shape[0]
        output_tokens = self.output_tokens(sparse.dtype)
        tokens = torch.cat([output_tokens.expand(B, -1, -1), sparse], dim=1)
        if token_mask is not None:
            token_mask = torch.cat([token_mask.new_ones(B, output_tokens.shape[0]), token_mask], dim=1)
        if point_batch_size > 1:
            image_embeddings = image_embeddings.repeat_interleave(point_batch_size, dim=0)
        return self.transformer(image_embeddings + dense, image_pe.expand(B, -1, -1, -1), tokens, token_mask)

    def predict_masks(
        self,
        image_features: dict[str, torch.Tensor],
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
        point_batch_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` before choosing: every mask head's output, the single-mask head first.

        Returns:
            mask logits `(B, num_mask_tokens, 4h, 4w)` and IoU predictions `(B, num_mask_tokens)`
            (num_mask_tokens = 4 for SAM; index 0 is what `multimask_output=False` returns).
        """
        hs, src = self.run_transformer(
            image_features["image_embeddings"], image_pe, sparse, token_mask, dense, point_batch_size
        )
        h, w = dense.shape[-2:]
        hyper_in = self._hypernetwork_weights(hs, slice(0, self.num_mask_tokens))
        masks = upscale_and_project(self.output_upscaling, src, hyper_in, h, w)
        return masks, self.iou_prediction_head(hs[:, 0])

    def _hypernetwork_weights(self, hs: torch.Tensor, heads: slice) -> torch.Tensor:
        """Output tokens `(B, T, C)` (IoU token first) -> `(B, M, C / 8)` weights of the mask heads `heads`
        (indices among the mask tokens), each mask token through its own MLP."""
        mask_tokens = hs[:, 1 : 1 + self.num_mask_tokens][:, heads]
        mlps = self.output_hypernetworks_mlps[heads]
        return torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mlps)], 1)

    def prompt_head(
        self,
        image_features: dict[str, torch.Tensor],
        hq_token_only: bool = False,
        multimask_output: bool = True,
    ) -> PromptHead:
        """The decoder's outputs from the transformer's outputs, for the many-prompt path
        (`fast_decoder.decode_point_prompts`), whatever of the image it needs computed once for all prompts.

        The returned function takes the output and prompt tokens `(P, T, C)` and the image tokens `(P, h * w, C)`
        after the transformer and returns what `forward(..., multimask_output=multimask_output)` returns.
        """
        _refuse_hq_token_only(hq_token_only)
        heads = _mask_heads(self.num_mask_tokens, multimask_output)

        def head(
            queries: torch.Tensor, keys: torch.Tensor, h: int, w: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hyper_in = self._hypernetwork_weights(queries, heads)  # (P, M, C / 8)
            # In float32, a prompt's upscaled map (16 h w C / 8 floats) outgrows a core's cache and the passes
            # over it run at memory speed; in cache-sized blocks the many-prompt decode ran 5-15% faster on a
            # 2-core AVX-512 CPU. bfloat16 (half the bytes), and a single prompt, ran faster whole there.
            block = _UPSCALE_BLOCK_BYTES if keys.dtype == torch.float32 else None
            masks = upscale_and_project(self.output_upscaling, keys, hyper_in, h, w, block)
            return masks, self.iou_prediction_head(queries[:, 0])[:, heads]

        return head


@register_mask_decoder("hq")
class MaskDecoderHQ(MaskDecoder):
    """SAM-HQ's mask decoder (Ke et al., "Segment Anything in High Quality", NeurIPS 2023): SAM's, plus an HQ
    output token (`hf_token`, its MLP `hf_mlp`) whose mask is predicted over HQ features: SAM's upscaled image
    tokens refined by `embedding_maskfeature`, plus the image embedding (`embedding_encoder`) and the encoder's
    early feature (`compress_vit_feat`) upscaled 4x.

    Its outputs follow the official `MaskDecoderHQ.forward`: one mask per prompt group, the HQ mask added to
    SAM's single-mask output (or, with `multimask_output`, to the multimask output of highest predicted IoU,
    whose IoU it reports); with `hq_token_only` the HQ mask alone.
    """

    image_feature_names: ClassVar[tuple[str, ...]] = ("image_embeddings", "intermediate_embeddings")
    state_key: ClassVar[str | None] = "mask_decoder.hf_token.weight"
    # What SAM-HQ's paper trains (SAM frozen): the HQ token, its MLP and the three feature-fusion stacks.
    trained_in_full: ClassVar[tuple[str, ...]] = (
        "hf_token",
        "hf_mlp",
        "compress_vit_feat",
        "embedding_encoder",
        "embedding_maskfeature",
    )

    def __init__(self, config: Any):
        super().__init__(config)
        dim = config.mask_decoder_config.hidden_size
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        early_channels = config.vision_config.intermediate_channels
        self.compress_vit_feat = _upscaling(early_channels, dim, dim // 8, last_activation=False)
        self.embedding_encoder = _upscaling(dim, dim // 4, dim // 8, last_activation=False)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1),
        )

    def select_outputs(
        self, masks: torch.Tensor, iou_pred: torch.Tensor, multimask_output: bool, hq_token_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict_masks`' outputs -> SAM-HQ's one mask `(B, 1, 4h, 4w)` and its IoU `(B, 1)` (class
        docstring)."""
        candidates = _mask_heads(self.num_mask_tokens, multimask_output)
        hq_mask = masks[:, self.num_mask_tokens :]
        return _add_hq_mask(masks[:, candidates], iou_pred[:, candidates], hq_mask, hq_token_only)

    def select_single_mask(
        self,
        masks: torch.Tensor,
        iou_pred: torch.Tensor,
        multimask: torch.Tensor,
        hq_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hq_mask = masks[:, self.num_mask_tokens :]
        chosen, best_iou = _best_mask(masks[:, : self.num_mask_tokens], iou_pred, multimask)
        return (hq_mask if hq_token_only else chosen + hq_mask), best_iou

    def all_outputs(
        self, masks: torch.Tensor, iou_pred: torch.Tensor, hq_token_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if hq_token_only:
            raise ValueError("hq_token_only gives one mask per prompt group, not every head's answer")
        return masks[:, : self.num_mask_tokens] + masks[:, self.num_mask_tokens :], iou_pred

    def output_tokens(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight]).to(dtype)

    def hq_features(self, image_features: dict[str, torch.Tensor]) -> torch.Tensor:
        """`(batch_size, C / 8, 4h, 4w)`: the image embedding and the early feature, each upscaled 4x, summed."""
        early = image_features["intermediate_embeddings"].permute(0, 3, 1, 2)  # (batch_size, D, h, w)
        return self.embedding_encoder(image_features["image_embeddings"]) + self.compress_vit_feat(early)

    def predict_masks(
        self,
        image_features: dict[str, torch.Tensor],
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        token_mask: torch.Tensor | None,
        dense: torch.Tensor,
        point_batch_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every head's output: mask logits `(B, num_mask_tokens + 1, 4h, 4w)`, SAM's heads then the HQ mask,
        and SAM's IoU predictions `(B, num_mask_tokens)`."""
        hq_features = self.hq_features(image_features)
        if point_batch_size > 1:
            hq_features = hq_features.repeat_interleave(point_batch_size, dim=0)
        hs, src = self.run_transformer(
            image_features["image_embeddings"], image_pe, sparse, token_mask, dense, point_batch_size
        )
        B, h, w = hs.shape[0], *dense.shape[-2:]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(B, -1, h, w))  # (B, C/8, 4h, 4w)
        masks = self._sam_and_hq_masks(hs, upscaled, hq_features, slice(0, self.num_mask_tokens))
        return masks, self.iou_prediction_head(hs[:, 0])

    def _sam_and_hq_masks(
        self, hs: torch.Tensor, upscaled: torch.Tensor, hq_features: torch.Tensor, heads: slice
    ) -> torch.Tensor:
        """Masks of SAM's mask heads `heads` over `upscaled` `(B, C / 8, 4h, 4w)` and of the HQ token over the
        refined features plus `hq_features`, concatenated: `(B, M + 1, 4h, 4w)`."""
        B, _, H, W = upscaled.shape
        hyper_in = self._hypernetwork_weights(hs, heads)  # (B, M, C / 8)
        hq_in = self.hf_mlp(hs[:, 1 + self.num_mask_tokens])[:, None]  # (B, 1, C / 8)
        refined = self.embedding_maskfeature(upscaled) + hq_features
        sam_masks = hyper_in @ upscaled.flatten(2)
        hq_masks = hq_in @ refined.flatten(2)
        return torch.cat([sam_masks, hq_masks], dim=1).reshape(B, -1, H, W)

    def prompt_head(
        self,
        image_features: dict[str, torch.Tensor],
        hq_token_only: bool = False,
        multimask_output: bool = True,
    ) -> PromptHead:
        hq_features = self.hq_features(image_features)  # (1, C / 8, 4h, 4w), once for all prompts
        heads = _mask_heads(self.num_mask_tokens, multimask_output)

        def head(
            queries: torch.Tensor, keys: torch.Tensor, h: int, w: int
        ) -> tuple[torch.Tensor, torch.Tensor]:
            P = queries.shape[0]
            upscaled = self.output_upscaling(
                keys.unflatten(1, (h, w)).permute(0, 3, 1, 2)
            )  # (P, C/8, 4h, 4w)
            masks = self._sam_and_hq_masks(queries, upscaled, hq_features.expand(P, -1, -1, -1), heads)
            iou_pred = self.iou_prediction_head(queries[:, 0])[:, heads]
            return _add_hq_mask(masks[:, :-1], iou_pred, masks[:, -1:], hq_token_only)

        return head


def _mask_heads(num_mask_tokens: int, multimask_output: bool) -> slice:
    """SAM's mask heads `forward` answers with: the ambiguity-aware ones, or the single-mask head (index 0)."""
    return slice(1, num_mask_tokens) if multimask_output else slice(0, 1)


def _refuse_hq_token_only(hq_token_only: bool) -> None:
    if hq_token_only:
        raise ValueError(
            "hq_token_only=True needs SAM-HQ's mask decoder (mask_decoder_config.decoder_type 'hq'); this "
            "model's decoder is SAM's ('sam')"
        )


def _best_mask(
    masks: torch.Tensor, iou_pred: torch.Tensor, multimask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Of SAM's heads `(B, num_mask_tokens, H, W)` (single-mask head first), the best-scored multimask output
    where `multimask` is 1, the single-mask output where it is 0, without control flow: the single-mask head's
    score is shifted by -1000 or +1000 before the argmax (official `SamOnnxModel.select_masks`). Returns
    `(B, 1, H, W)` and its unshifted IoU `(B, 1)`."""
    shift = iou_pred.new_tensor([1000.0] + [0.0] * (iou_pred.shape[1] - 1))
    multimask = torch.as_tensor(multimask, dtype=iou_pred.dtype, device=iou_pred.device).reshape(-1, 1)
    best = torch.argmax(iou_pred + (1 - 2 * multimask) * shift, dim=1, keepdim=True)  # (B, 1)
    chosen = masks.gather(1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
    return chosen, iou_pred.gather(1, best)


def _add_hq_mask(
    sam_masks: torch.Tensor, iou_pred: torch.Tensor, hq_mask: torch.Tensor, hq_token_only: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-HQ's output rule (official `MaskDecoderHQ.forward`): of SAM's candidate masks `(B, M, H, W)` (the
    multimask outputs, or the single one) the one of highest IoU `(B, M)`, plus the HQ mask `(B, 1, H, W)`, or
    the HQ mask alone with `hq_token_only`. Returns `(B, 1, H, W)` and that highest IoU `(B, 1)`."""
    best_iou, best = iou_pred.max(dim=1, keepdim=True)
    if hq_token_only:
        return hq_mask, best_iou
    chosen = sam_masks.gather(1, best[:, :, None, None].expand(-1, -1, *sam_masks.shape[-2:]))
    return chosen + hq_mask, best_iou


def upscale_and_project(
    upscaling: nn.Module,
    keys: torch.Tensor,
    hyper_in: torch.Tensor,
    h: int,
    w: int,
    block_bytes: int | None = None,
) -> torch.Tensor:
    """SAM's 4x upscaling and mask projection on channels-last image tokens.

    A transposed convolution with kernel = stride = 2 maps each input pixel to its own 2x2 output block, so when
    `upscaling` holds the plain modules it is built from (`_is_plain_upscaling`) it runs as two matrix products
    on the tokens, reading those modules' weights; anything else (an adapter on a convolution, a
    `modules_to_save` copy, a hook) is called as a module.

    Args:
        keys: `(P, h * w, C)` image tokens after the transformer; hyper_in: `(P, M, C / 8)` mask weights.
        block_bytes: with the matrix products, compute each prompt's upscaled map in blocks of tokens whose
            map takes at most this many bytes (None: all at once). The result is bit-identical.

    Returns:
        `(P, M, 4h, 4w)` mask logits.
    """
    num_prompts, num_masks = hyper_in.shape[:2]
    if _is_plain_upscaling(upscaling):
        conv1, norm, act1, conv2, act2 = upscaling
        c1, c2 = conv1.out_channels, conv2.out_channels
        # Each transposed convolution as a matrix product from a pixel to its 2x2 block: weight (C_in, C_out,
        # a, b) -> (C_in, (a, b, C_out)); the bias rides on the product.
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1).T
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2).T
        b1, b2 = conv1.bias.repeat(4), conv2.bias.repeat(4)

        def block(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            """`(..., n, C)` tokens, `(..., M, C / 8)` mask weights -> `(..., 16 n, M)` mask logits."""
            x = F.linear(tokens, w1, b1).unflatten(-1, (4, c1))
            x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))  # LayerNorm2d, channels last
            x = act2(F.linear(x, w2, b2))  # (..., n, (a, b), (a', b', c2))
            return x.reshape(*tokens.shape[:-2], -1, c2) @ weights.transpose(-1, -2)

        rows = (
            keys.shape[1] if block_bytes is None else max(1, block_bytes // (16 * c2 * keys.element_size()))
        )
        if rows >= keys.shape[1]:
            masks = block(keys, hyper_in)  # (P, N * 16, M)
        else:
            masks = torch.stack(
                [
                    torch.cat([block(k[start : start + rows], m) for start in range(0, k.shape[0], rows)])
                    for k, m in zip(keys, hyper_in, strict=True)
                ]
            )
        # Output pixel (4i + 2a + a', 4j + 2b + b') of input pixel (i, j).
        masks = masks.view(num_prompts, h, w, 2, 2, 2, 2, num_masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(num_prompts, num_masks, 4 * h, 4 * w)
    # A channels-last view of the tokens as images: no copy, and the convolutions keep that layout.
    images = keys.unflatten(1, (h, w)).permute(0, 3, 1, 2)  # (P, C, h, w)
    upscaled = upscaling(images).permute(0, 2, 3, 1)  # (P, 4h, 4w, C / 8)
    masks = upscaled.reshape(num_prompts, 16 * h * w, -1) @ hyper_in.transpose(1, 2)  # (P, 16 h w, M)
    return masks.view(num_prompts, 4 * h, 4 * w, num_masks).permute(0, 3, 1, 2)


def _is_plain_upscaling(upscaling: nn.Module) -> bool:
    """`upscaling` is SAM's `Sequential(ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d, GELU)` of plain
    modules (exact classes, no hooks), transposed convolutions with kernel = stride = 2 and no padding."""
    expected = (nn.Sequential, nn.ConvTranspose2d, LayerNorm2d, nn.GELU, nn.ConvTranspose2d, nn.GELU)
    modules = [upscaling, *upscaling.children()]
    if not are_plain(modules, expected):
        return False
    return all(
        conv.kernel_size == conv.stride == (2, 2)
        and conv.padding == conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is not None
        for conv in (modules[1], modules[4])
    )
