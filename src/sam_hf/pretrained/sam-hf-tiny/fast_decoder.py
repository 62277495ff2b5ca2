"""The mask decoder for many single-point prompts on one image, re-associated for that case.

`decode_point_prompts` computes what `SamHFModel.forward(image_embeddings=..., input_points=...)` computes for
`P` prompts of one foreground point each, with far less work on the large `(P, N, C)` image-token tensors
(N = h * w image tokens, T prompt tokens, H heads, d = width per head):

- the image tokens are the same for every prompt until the first image-to-token attention updates them, so
  the first layer projects them once for all prompts, and once for all chunks when the prompts are decoded in
  chunks (`chunk_size`, which bounds the per-prompt temporaries);
- a prompt has a handful of tokens against thousands of image tokens, so value and output projections are
  applied to the few attention-weighted tokens rather than to every image token (`sum_n p_n v(x_n) =
  v(sum_n p_n x_n)` for an affine `v`, as the weights `p_n` sum to 1), and once the image tokens differ per
  prompt, the projection on the image side of a score moves to the token side (`q . (W x + b) = (W^T q) . x +
  q . b`), so those tokens are never projected per prompt;
- the upscaling runs on channels-last image tokens and the mask projection is one matrix product; a
  transposed convolution with kernel = stride = 2 maps each input pixel to its own 2x2 output block, so when
  `output_upscaling` holds the plain modules it is built from it runs as two matrix products on the tokens
  (`mask_decoder.upscale_and_project`, in SAM's decoder's `prompt_head`, which this path ends in).

Every weight is used through a call of the module that owns it (`q_proj`, `k_proj`, `v_proj`, `out_proj`,
norms, MLPs, `output_upscaling`): adapters such as PEFT LoRA (merged or not), `modules_to_save` copies, hooks
and dtype changes apply as in the model's own forward. The transposed projection `W^T q` is read through calls
too: `W` and `b` of an affine projection are its outputs on the scaled identity and on zero
(`_ImageCache.affine_map`). The one exception is the upscaling's matrix-product form, which reads the weights
of its transposed convolutions and norm, and is taken only when each of those modules is exactly the plain
class (`nn.ConvTranspose2d`, `LayerNorm2d`, `nn.GELU`) without hooks, so that reading the weights computes
what calling the module would; anything else (an adapter on a convolution, a `modules_to_save` copy, a hook)
is called as a module. The re-association needs the attention projections to be affine in their input (a
linear layer, with or without a LoRA adapter, in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .mask_decoder import PromptHead

__all__ = ["decode_point_prompts"]

# A power of two, so scaling is exact; large enough that the bias is small beside `s W` when it is subtracted.
_PROBE_SCALE = 256.0


@dataclass
class _ImageCache:
    """What the chunks of one `decode_point_prompts` call share: the shared image tokens with positions, per
    attention the projections of the shared image tokens, and per projection module, its affine map."""

    positioned: torch.Tensor | None = None  # (1, N, C)
    projections: dict[nn.Module, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    maps: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def affine_map(self, projection: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`W` `(out, in)` and `b` `(out,)` of `projection(x) = W x + b` for inputs like `like` `(..., in)`,
        read through calls of the module, so an adapter or a hook on it applies: `b = f(0)` and
        `W^T = (f(s I) - b) / s`."""
        if projection not in self.maps:
            dim = like.shape[-1]
            probes = torch.cat([torch.eye(dim, dtype=like.dtype, device=like.device) * _PROBE_SCALE,
                                like.new_zeros(1, dim)])  # fmt: skip
            outputs = projection(probes)
            bias = outputs[-1]
            self.maps[projection] = (((outputs[:-1] - bias) / _PROBE_SCALE).T, bias)
        return self.maps[projection]


def decode_point_prompts(
    prompt_encoder: nn.Module,
    mask_decoder: nn.Module,
    image_features: dict[str, torch.Tensor],
    points: torch.Tensor,
    chunk_size: int | None = None,
    hq_token_only: bool = False,
    multimask_output: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder's outputs for `P` single foreground points on one image.

    Equal to `model(**image_features, input_points=points[None, :, None], input_labels=ones,
    multimask_output=multimask_output, hq_token_only=hq_token_only)` up to float rounding. Runs in the dtype of
    `mask_decoder`'s output tokens (a bf16 copy of the decoder runs natively in bf16). The transformer is
    computed here; the decoder's own `prompt_head` turns its outputs into masks.

    Args:
        prompt_encoder: the model's prompt encoder.
        mask_decoder: the model's mask decoder, or a copy of it cast to another dtype.
        image_features: the image's features by name (`SamHFModel.get_image_features`), each with batch size 1:
            `image_embeddings` `(1, C, h, w)` and whatever else the decoder's `image_feature_names` list.
        points: `(P, 2)` XY in the model frame, P >= 1.
        chunk_size: prompts decoded together after the shared first-layer work (None: all `P`); each prompt
            holds `(h w, C)` image tokens and a `(16 h w, C / 8)` upscaled map while its chunk runs.
        hq_token_only: SAM-HQ's option (ValueError for SAM's decoder).
        multimask_output: the ambiguity-aware heads' masks, or the single-mask head's.

    Returns:
        mask logits `(P, M, 4h, 4w)` and IoU predictions `(P, M)` in the decoder's dtype: M = 3 for SAM's
        decoder with `multimask_output`, else 1.
    """
    dtype = mask_decoder.iou_token.weight.dtype
    features = {name: image_features[name].to(dtype) for name in mask_decoder.image_feature_names}
    head = mask_decoder.prompt_head(features, hq_token_only, multimask_output)
    image_embeddings = image_features["image_embeddings"]
    num_prompts = points.shape[0]
    labels = torch.ones(num_prompts, 1, dtype=torch.long, device=points.device)
    # A single point gets SAM's "not a point" token, a real token: no token is masked out of attention.
    sparse, _, dense = prompt_encoder(points[:, None, :], labels, None, None, num_prompts)
    output_tokens = mask_decoder.output_tokens(dtype)
    tokens = torch.cat([output_tokens.expand(num_prompts, -1, -1), sparse.to(dtype)], dim=1)  # (P, T, C)
    h, w = image_embeddings.shape[-2:]
    # Without a mask prompt the dense embedding is the same for every prompt.
    src = (image_embeddings.to(dense.dtype) + dense[:1]).to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)
    key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)
    step = num_prompts if chunk_size is None else chunk_size
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    cache = _ImageCache()
    decoded = [
        _decode_chunk(mask_decoder, head, tokens[start : start + step], src, key_pe, cache, h, w)
        for start in range(0, num_prompts, step)
    ]
    if len(decoded) == 1:
        return decoded[0]
    return torch.cat([masks for masks, _ in decoded]), torch.cat([iou for _, iou in decoded])


def _decode_chunk(
    mask_decoder: nn.Module,
    head: PromptHead,
    tokens: torch.Tensor,
    src: torch.Tensor,
    key_pe: torch.Tensor,
    cache: _ImageCache,
    h: int,
    w: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`decode_point_prompts` for prompt tokens `(P, T, C)` against the shared image tokens `src` and their
    positions `key_pe` `(1, N, C)`."""
    # keys: `src` until the first image-to-token attention, then per prompt (P, N, C), even for P = 1
    queries, keys = tokens, src
    for layer in mask_decoder.transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        shared = keys is src
        if shared and cache.positioned is None:
            cache.positioned = src + key_pe
        # image tokens with positions, used by both cross attentions
        keys_pe = cache.positioned if shared else keys + key_pe
        attended = _token_to_image(
            layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys, cache, shared
        )
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = _image_to_token(
            layer.cross_attn_image_to_token, keys_pe, keys, queries + tokens, queries, cache, shared
        )
        del keys_pe
        keys = layer.norm4(keys)
    transformer = mask_decoder.transformer
    attended = _token_to_image(
        transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys, cache, False
    )
    queries = transformer.norm_final_attn(queries + attended)

    return head(queries, keys, h, w)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(B, L, H * d)` -> `(B, H, L, d)`."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _head_diagonal(projected: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(P, H, T, H * d)`: row `(h, t)` projected by every head -> `(P, T, H * d)` keeping head h of row h."""
    P, H, T, _ = projected.shape
    per_head = projected.unflatten(-1, (num_heads, -1))  # (P, H_row, T, H_out, d)
    return per_head.diagonal(dim1=1, dim2=3).permute(0, 1, 3, 2).reshape(P, T, -1)


def _token_to_image(
    attn: nn.Module,
    q_in: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cache: _ImageCache,
    shared: bool,
) -> torch.Tensor:
    """Prompt tokens `(P, T, C)` attend to image tokens: keys (with positions) and values, `(1, N, C)` shared
    by every prompt (`shared`: their projections are made once, for all chunks) or `(P, N, C)`.

    Returns:
        `(P, T, C)`, as `attn(q_in, keys, values)`.
    """
    heads = attn.num_heads
    q = _split_heads(attn.q_proj(q_in), heads)  # (P, H, T, d)
    P, H, T, d = q.shape
    q = q * d**-0.5
    if shared:
        # Shared image tokens: one product per head for all prompts, keys and values projected once.
        if attn not in cache.projections:
            cache.projections[attn] = (
                _split_heads(attn.k_proj(keys), heads)[0],  # (H, N, d)
                _split_heads(attn.v_proj(values), heads)[0],
            )
        k, v = cache.projections[attn]
        rows = q.transpose(0, 1).reshape(H, P * T, d)
        probs = torch.softmax(rows @ k.transpose(1, 2), dim=-1)  # (H, P*T, N)
        out = (probs @ v).view(H, P, T, d).permute(1, 2, 0, 3).reshape(P, T, H * d)
    else:
        # q . k(x) = (W_k^T q) . x + q . b_k: the second term is the same for every image token and cancels
        # in the softmax.
        w_k, _ = cache.affine_map(attn.k_proj, keys)
        folded = torch.einsum("phtd,hdc->phtc", q, w_k.view(H, d, -1)).reshape(P, H * T, -1)
        probs = torch.softmax(folded @ keys.transpose(1, 2), dim=-1)  # (P, H*T, N)
        mixed = (probs @ values).view(P, H, T, -1)  # attention-weighted image tokens
        # Each head's weights sum to 1, so projecting the mixture equals mixing the projected values.
        out = _head_diagonal(attn.v_proj(mixed), heads)
    return attn.out_proj(out)


def _image_to_token(
    attn: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    k_in: torch.Tensor,
    v_in: torch.Tensor,
    cache: _ImageCache,
    shared: bool,
) -> torch.Tensor:
    """Image tokens attend to prompt tokens `(P, T, C)`: queries are the image tokens with positions and
    `keys` the image tokens themselves (the residual), both `(1, N, C)` shared by every prompt (`shared`: the
    queries' projection is made once, for all chunks) or `(P, N, C)`.

    Returns:
        `keys + attn(queries, k_in, v_in)`, `(P, N, C)` (the residual of the block, before its norm);
        per-prompt `keys` are updated in place to save a pass over them.
    """
    heads = attn.num_heads
    k = _split_heads(attn.k_proj(k_in), heads)  # (P, H, T, d)
    v = _split_heads(attn.v_proj(v_in), heads)
    P, H, T, d = k.shape
    k = k * d**-0.5
    if shared:
        # Shared image tokens: one product per head for all prompts.
        if attn not in cache.projections:
            cache.projections[attn] = (attn.q_proj(queries)[0].unflatten(-1, (H, d)).permute(1, 2, 0),)
        (q,) = cache.projections[attn]  # (H, d, N)
        rows = k.transpose(0, 1).reshape(H, P * T, d)
        scores = (rows @ q).view(H, P, T, -1).transpose(0, 1)  # (P, H, T, N)
    else:
        # (W_q x + b_q) . k = x . (W_q^T k) + b_q . k: the projection moves to the few prompt tokens.
        w_q, b_q = cache.affine_map(attn.q_proj, queries)
        folded = torch.einsum("phtd,hdc->phtc", k, w_q.view(H, d, -1)).reshape(P, H * T, -1)
        bias = (k @ b_q.view(H, d, 1)).reshape(P, H * T, 1)
        scores = torch.baddbmm(bias, folded, queries.transpose(1, 2)).view(P, H, T, -1)  # (P, H, T, N)
    # Softmax over each head's T tokens; the strided dimension keeps the long N axis contiguous.
    probs = torch.softmax(scores, dim=2).reshape(P, H * T, -1)  # (P, H*T, N)
    # The output projection applied to each head's values alone: (sum_h sum_t p_ht e_h(v_ht)) W^T + b
    # = sum_h sum_t p_ht out_proj(e_h(v_ht)) - (H - 1) b, as each head's weights sum to 1.
    per_head = torch.zeros(P, H, T, H, d, dtype=v.dtype, device=v.device)
    per_head.diagonal(dim1=1, dim2=3).copy_(v.permute(0, 2, 3, 1))
    per_head = per_head.flatten(3)  # (P, H, T, H * d)
    _, bias = cache.affine_map(attn.out_proj, per_head)  # (C,)
    values = attn.out_proj(per_head) - bias * (H - 1) / H  # (P, H, T, C)
    if shared:  # the shared tokens stay as they are for the other prompts and chunks
        return torch.baddbmm(keys, probs.transpose(1, 2), values.flatten(1, 2))
    return keys.baddbmm_(probs.transpose(1, 2), values.flatten(1, 2))  # the caller's keys are not reused
