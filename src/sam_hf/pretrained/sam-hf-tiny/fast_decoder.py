"""The mask decoder for many single-point prompts on one image, re-associated for that case.

`decode_point_prompts` computes what `SamHFModel.forward(image_embeddings=..., input_points=...)` computes for
`P` prompts of one foreground point each, with far less work on the large `(P, N, C)` image-token tensors
(N = h * w image tokens, T prompt tokens, H heads, d = width per head):

- the image tokens are the same for every prompt until the first image-to-token attention updates them, so
  the first layer projects them once for all prompts;
- a prompt has a handful of tokens against thousands of image tokens, so value and output projections are
  applied to the few attention-weighted tokens rather than to every image token (`sum_n p_n v(x_n) =
  v(sum_n p_n x_n)` for an affine `v`, as the weights `p_n` sum to 1);
- the upscaling runs on channels-last image tokens and the mask projection is one matrix product.

Every weight is used through a call of the module that owns it (`q_proj`, `k_proj`, `v_proj`, `out_proj`,
norms, MLPs, `output_upscaling`), never read from its `.weight`: adapters such as PEFT LoRA (merged or not),
`modules_to_save` copies, hooks and dtype changes apply as in the model's own forward. The re-association
needs the attention projections to be affine in their input (a linear layer, with or without a LoRA adapter,
in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["decode_point_prompts"]


def decode_point_prompts(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    image_embeddings: torch.Tensor,
    points: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask outputs of the mask decoder for `P` single foreground points on one image.

    Equal to `model(image_embeddings=image_embeddings, input_points=points[None, :, None],
    input_labels=ones, multimask_output=True)` up to float rounding. Runs in the dtype of `mask_decoder`'s
    output tokens (a bf16 copy of the decoder runs natively in bf16).

    Args:
        prompt_encoder: the model's prompt encoder.
        mask_decoder: the model's mask decoder, or a copy of it cast to another dtype.
        image_embeddings: `(1, C, h, w)` embedding of the image.
        points: `(P, 2)` XY in the model frame.

    Returns:
        mask logits `(P, 3, 4h, 4w)` and IoU predictions `(P, 3)`, in the decoder's dtype.
    """
    transformer = mask_decoder.transformer
    dtype = mask_decoder.iou_token.weight.dtype
    num_prompts = points.shape[0]
    labels = torch.ones(num_prompts, 1, dtype=torch.long, device=points.device)
    # A single point gets SAM's "not a point" token, a real token: no token is masked out of attention.
    sparse, _, dense = prompt_encoder(points[:, None, :], labels, None, None, num_prompts)
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight]).to(dtype)
    tokens = torch.cat([output_tokens.expand(num_prompts, -1, -1), sparse.to(dtype)], dim=1)  # (P, T, C)
    h, w = image_embeddings.shape[-2:]
    # Without a mask prompt the dense embedding is the same for every prompt.
    src = (image_embeddings.to(dense.dtype) + dense[:1]).to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)
    key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)

    queries, keys = tokens, src  # keys: (1, N, C) until the first image-to-token attention, then (P, N, C)
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        keys_pe = keys + key_pe  # image tokens with positions, used by both cross attentions
        attended = _token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = _image_to_token(layer.cross_attn_image_to_token, keys_pe, keys, queries + tokens, queries)
        del keys_pe
        keys = layer.norm4(keys)
    attended = _token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attended)

    mask_tokens = queries[:, 2 : 1 + mask_decoder.num_mask_tokens]  # the multimask outputs only
    mlps = mask_decoder.output_hypernetworks_mlps[1:]
    hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mlps)], 1)  # (P, 3, C / 8)
    masks = _upscale_and_project(mask_decoder.output_upscaling, keys, hyper_in, h, w)
    iou_pred = mask_decoder.iou_prediction_head(queries[:, 0])
    return masks, iou_pred[:, 1:]


def _upscale_and_project(
    upscaling: nn.Module, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """The decoder's 4x upscaling and mask projection on channels-last image tokens.

    Args:
        keys: `(P, h * w, C)` image tokens after the transformer; hyper_in: `(P, M, C / 8)` mask weights.

    Returns:
        `(P, M, 4h, 4w)` mask logits.
    """
    num_prompts, num_masks = hyper_in.shape[:2]
    # A channels-last view of the tokens as images: no copy, and the convolutions keep that layout.
    images = keys.unflatten(1, (h, w)).permute(0, 3, 1, 2)  # (P, C, h, w)
    upscaled = upscaling(images).permute(0, 2, 3, 1)  # (P, 4h, 4w, C / 8)
    masks = upscaled.reshape(num_prompts, 16 * h * w, -1) @ hyper_in.transpose(1, 2)  # (P, 16 h w, M)
    return masks.view(num_prompts, 4 * h, 4 * w, num_masks).permute(0, 3, 1, 2)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(B, L, H * d)` -> `(B, H, L, d)`."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _head_diagonal(projected: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(P, H, T, H * d)`: row `(h, t)` projected by every head -> `(P, T, H * d)` keeping head h of row h."""
    P, H, T, _ = projected.shape
    per_head = projected.unflatten(-1, (num_heads, -1))  # (P, H_row, T, H_out, d)
    return per_head.diagonal(dim1=1, dim2=3).permute(0, 1, 3, 2).reshape(P, T, -1)


def _token_to_image(
    attn: nn.Module, q_in: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Prompt tokens `(P, T, C)` attend to image tokens: keys (with positions) and values `(1 or P, N, C)`.

    Returns:
        `(P, T, C)`, as `attn(q_in, keys, values)`.
    """
    heads = attn.num_heads
    q = _split_heads(attn.q_proj(q_in), heads)  # (P, H, T, d)
    P, H, T, d = q.shape
    q = q * d**-0.5
    k = _split_heads(attn.k_proj(keys), heads)  # (1 or P, H, N, d)
    if keys.shape[0] == 1:
        # Shared image tokens: one product per head for all prompts, values projected once.
        v = _split_heads(attn.v_proj(values), heads)[0]  # (H, N, d)
        rows = q.transpose(0, 1).reshape(H, P * T, d)
        probs = torch.softmax(rows @ k[0].transpose(1, 2), dim=-1)  # (H, P*T, N)
        out = (probs @ v).view(H, P, T, d).permute(1, 2, 0, 3).reshape(P, T, H * d)
    else:
        probs = torch.softmax(q @ k.transpose(2, 3), dim=-1)  # (P, H, T, N)
        mixed = (probs.view(P, H * T, -1) @ values).view(P, H, T, -1)  # attention-weighted image tokens
        # Each head's weights sum to 1, so projecting the mixture equals mixing the projected values.
        out = _head_diagonal(attn.v_proj(mixed), heads)
    return attn.out_proj(out)


def _image_to_token(
    attn: nn.Module, queries: torch.Tensor, keys: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> torch.Tensor:
    """Image tokens attend to prompt tokens `(P, T, C)`: queries are the image tokens with positions and
    `keys` the image tokens themselves (the residual), both `(1 or P, N, C)`.

    Returns:
        `keys + attn(queries, k_in, v_in)`, `(P, N, C)` (the residual of the block, before its norm);
        per-prompt `keys` are updated in place to save a pass over them.
    """
    heads = attn.num_heads
    k = _split_heads(attn.k_proj(k_in), heads)  # (P, H, T, d)
    v = _split_heads(attn.v_proj(v_in), heads)
    P, H, T, d = k.shape
    k = k * d**-0.5
    q = attn.q_proj(queries).unflatten(-1, (H, d))  # (1 or P, N, H, d)
    if queries.shape[0] == 1:
        # Shared image tokens: one product per head for all prompts.
        rows = k.transpose(0, 1).reshape(H, P * T, d)
        scores = (rows @ q[0].permute(1, 2, 0)).view(H, P, T, -1).transpose(0, 1)  # (P, H, T, N)
    else:
        scores = k @ q.permute(0, 2, 3, 1)  # (P, H, T, N)
    # Softmax over each head's T tokens; the strided dimension keeps the long N axis contiguous.
    probs = torch.softmax(scores, dim=2).reshape(P, H * T, -1)  # (P, H*T, N)
    # The output projection applied to each head's values alone: (sum_h sum_t p_ht e_h(v_ht)) W^T + b
    # = sum_h sum_t p_ht out_proj(e_h(v_ht)) - (H - 1) b, as each head's weights sum to 1.
    per_head = torch.zeros(P, H, T, H, d, dtype=v.dtype, device=v.device)
    per_head.diagonal(dim1=1, dim2=3).copy_(v.permute(0, 2, 3, 1))
    bias = attn.out_proj(v.new_zeros(1, H * d))  # (1, C)
    values = attn.out_proj(per_head.flatten(3)) - bias * (H - 1) / H  # (P, H, T, C)
    if keys.shape[0] == 1:
        return torch.baddbmm(keys, probs.transpose(1, 2), values.flatten(1, 2))
    return keys.baddbmm_(probs.transpose(1, 2), values.flatten(1, 2))  # the caller's keys are not reused
