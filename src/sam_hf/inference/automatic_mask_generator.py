"""Automatic mask generation: prompt SAM with a grid of points, keep the good and distinct masks.

A drop-in replacement for `segment_anything.SamAutomaticMaskGenerator` (same arguments, same output
records) that does the expensive work once and only on what survives:

- the image embedding is computed once per crop and the decoder runs on many prompts per call, re-associated
  for single-point prompts (`_decode_point_prompts`: image tokens are never projected per prompt), natively
  in bf16 when `precision="bf16"`;
- the predicted-IoU filter runs on the low-resolution logits (it does not depend on resolution);
- only the survivors are brought to full resolution, in bounded chunks, with one matrix product per axis
  equal to SAM's upsample-crop-resize post-processing; stability, binarisation, boxes and run-length
  encoding are vectorised over the chunk;
- masks are kept as compact run-length counts in the crop's frame and moved to the image frame only if
  they survive box NMS;
- on CPU, glibc is asked to reuse freed blocks (see `_keep_freed_memory_in_process`): page faults on the
  large per-batch activations otherwise cost more than the arithmetic.
"""

from __future__ import annotations

import copy
import ctypes
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_area

from ..data.images import to_rgb
from ..data.rle import area_from_rle, coco_encode_rle, rle_counts, rle_to_mask
from ..modeling import SamHFModel
from ..modeling.mask_decoder import MaskDecoder
from ..processing_sam_hf import SamHFProcessor
from .amg_utils import (
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_points,
    upsampling_matrix,
)
from .predictor import SamPredictor

__all__ = ["SamAutomaticMaskGenerator"]

_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_MASK_THRESHOLD = 0.0
# glibc mallopt parameters (malloc.h): blocks up to _MALLOC_THRESHOLD come from the heap, and up to
# _MALLOC_KEEP bytes of freed heap are kept for reuse.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_THRESHOLD, _MALLOC_KEEP = 64 << 20, 512 << 20


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Args:
        model: the `SamHFModel` to prompt; the generator runs on its device.
        points_per_side: points sampled along each side of the image (`points_per_side**2` prompts);
            `None` when `point_grids` is given.
        points_per_batch: prompts per step (decoded, then post-processed together); on CPU the decoder
            runs them in sub-batches whose largest activation stays under 32 MiB.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables the filter).
        stability_score_thresh: keep masks whose stability score is at least this (0 disables).
        stability_score_offset: logit offset of the two thresholds the stability score compares.
        box_nms_thresh: box IoU above which a mask is dropped as a duplicate within a crop.
        crop_n_layers: run again on crops: layer i has `(2**i)**2` crops.
        crop_nms_thresh: box IoU for removing duplicates between crops.
        crop_overlap_ratio: overlap of neighbouring crops in the first layer, as a fraction of the short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this to the power i.
        point_grids: one `(num_points, 2)` XY grid in [0, 1] per crop layer; exclusive with `points_per_side`.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels, then
            remove new duplicates by box NMS (no OpenCV needed).
        output_mode: `"binary_mask"` (`(H, W)` bool arrays), `"uncompressed_rle"` or `"coco_rle"`
            (compressed COCO RLE that `pycocotools.mask.decode` reads).
        precision: `"fp32"` (default; matches the official generator) or `"bf16"`/`"fp16"`: the image
            encoder's weights are converted to that dtype in place (as `SamPredictor(encoder_dtype=...)`
            does), and the mask decoder and the upsampling of its logits run natively in that dtype on a
            cast copy of the decoder (several times faster on CPU; masks differ slightly, see
            `benchmarks/bench_amg.py` for the agreement with fp32).
        max_chunk_pixels: full-resolution logits held at once (bounds memory on large images).

    Attributes:
        predictor: a `SamPredictor` on the same model, as in the official generator (code written for it
            reaches the model as `mask_generator.predictor.model`); `model` and `processor` are its own.
    """

    def __init__(
        self,
        model: SamHFModel,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        precision: str = "fp32",
        max_chunk_pixels: int = 2**24,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "exactly one of points_per_side or point_grids must be given, got "
                f"points_per_side={points_per_side!r} and point_grids={'None' if point_grids is None else 'a list'}"
            )
        if points_per_side is not None:
            if not isinstance(points_per_side, int) or points_per_side < 1:
                raise ValueError(f"points_per_side must be a positive int, got {points_per_side!r}")
            point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        self.point_grids = [_check_point_grid(grid, i) for i, grid in enumerate(point_grids)]
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"point_grids must hold one grid per crop layer ({crop_n_layers + 1} for "
                f"crop_n_layers={crop_n_layers}), got {len(self.point_grids)}"
            )
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {_OUTPUT_MODES}, got {output_mode!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {precision!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        self.predictor = SamPredictor(model, encoder_dtype=_PRECISIONS[precision])
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.precision = precision
        self.max_chunk_pixels = max_chunk_pixels

    @property
    def model(self) -> SamHFModel:
        """The model prompted, `self.predictor.model`."""
        return self.predictor.model

    @property
    def processor(self) -> SamHFProcessor:
        """The image and prompt processor, `self.predictor.processor`."""
        return self.predictor.processor

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Generate masks for `image`.

        Args:
            image: an image in any form `sam_hf.data.images.to_rgb` reads (e.g. `(H, W, 3)` uint8 RGB).

        Returns:
            One record per mask, in the official generator's format:
            `segmentation` (per `output_mode`), `area` (int pixels), `bbox` (XYWH list), `predicted_iou`,
            `point_coords` (`[[x, y]]`, the prompt in image pixels), `stability_score`, `crop_box` (XYWH list).
        """
        image = to_rgb(image)
        _keep_freed_memory_in_process()
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            data = self._postprocess_small_regions(
                data,
                image.shape[:2],
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
            )
        records = []
        for i, counts in enumerate(data["rles"]):
            rle = {"size": list(image.shape[:2]), "counts": counts.tolist()}
            if self.output_mode == "binary_mask":
                segmentation = rle_to_mask(rle)
            elif self.output_mode == "coco_rle":
                segmentation = coco_encode_rle(rle)
            else:
                segmentation = rle
            records.append(
                {
                    "segmentation": segmentation,
                    "area": area_from_rle(rle),
                    "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                    "predicted_iou": data["iou_preds"][i].item(),
                    "point_coords": [data["points"][i].tolist()],
                    "stability_score": data["stability_score"][i].item(),
                    "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
                }
            )
        _release_freed_memory()
        return records

    def _generate_masks(self, image: np.ndarray) -> dict[str, Any]:
        """Masks of every crop, duplicates between crops removed, run-length counts in the image frame."""
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        decoder = self._compute_decoder()
        data = _concat(
            [
                self._process_crop(image, box, layer, orig_size, decoder)
                for box, layer in zip(crop_boxes, layer_idxs, strict=True)
            ]
        )
        if len(crop_boxes) > 1 and len(data["rles"]) > 0:
            # Prefer masks from smaller crops: they saw the object at higher resolution.
            scores = 1 / box_area(data["crop_boxes"].float())
            keep = batched_nms(
                data["boxes"].float(), scores, torch.zeros_like(scores), iou_threshold=self.crop_nms_thresh
            )
            data = _filter(data, keep)
        data["rles"] = [
            _uncrop_counts(counts, box.tolist(), orig_size)
            for counts, box in zip(data["rles"], data["crop_boxes"], strict=True)
        ]
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
        decoder: MaskDecoder,
    ) -> dict[str, Any]:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        device = self.model.device
        pixel_values, _, reshaped_sizes = self.processor.preprocess_images([crop])
        embeddings = self.model.get_image_embeddings(pixel_values.to(device))  # in the encoder's dtype
        valid_h, valid_w = (int(s) for s in reshaped_sizes[0])
        mask_size, image_size = self.model.config.mask_size, self.model.config.vision_config.image_size
        upsample_h = _trimmed(upsampling_matrix(mask_size, image_size, valid_h, crop_h).to(device))
        upsample_w = _trimmed(upsampling_matrix(mask_size, image_size, valid_w, crop_w).to(device))

        points = self.point_grids[layer_idx] * np.array([crop_w, crop_h])  # (N, 2) XY crop pixels
        model_points = self.processor.transform_coords(torch.as_tensor(points), (crop_h, crop_w))
        batches = [
            self._process_batch(
                decoder,
                embeddings,
                model_points[start : start + self.points_per_batch].to(device, torch.float32),
                torch.as_tensor(points[start : start + self.points_per_batch]),
                upsample_h,
                upsample_w,
                crop_box,
                orig_size,
            )
            for start in range(0, len(points), self.points_per_batch)
        ]
        data = _concat(batches)
        keep = batched_nms(
            data["boxes"].float(),
            data["iou_preds"],
            torch.zeros_like(data["iou_preds"]),
            iou_threshold=self.box_nms_thresh,
        )
        data = _filter(data, keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box] * len(data["rles"]), dtype=torch.int64).reshape(-1, 4)
        return data

    def _process_batch(
        self,
        decoder: MaskDecoder,
        embeddings: torch.Tensor,
        model_points: torch.Tensor,
        points: torch.Tensor,
        upsample_h: torch.Tensor,
        upsample_w: torch.Tensor,
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> dict[str, Any]:
        """Decode one batch of point prompts and keep the masks that pass the filters.

        Args:
            embeddings: `(1, C, grid, grid)` image embedding of the crop.
            model_points: `(P, 2)` XY prompts in the model frame; points: `(P, 2)` the same in crop pixels.
            upsample_h: `(crop_h, k_h)`, upsample_w: `(crop_w, k_w)` low-res -> crop-pixel maps.
        """
        # Decoded in sub-batches whose largest activation stays below the malloc threshold (see
        # `_keep_freed_memory_in_process`), so its memory is reused rather than page-faulted in again.
        grid_h, grid_w = embeddings.shape[-2:]
        dim = decoder.iou_token.weight.shape[1]
        # bytes per prompt of the largest activation, the (16 h w, C / 8) upscaled map
        per_prompt = 2 * grid_h * grid_w * dim * decoder.iou_token.weight.element_size()
        step = (
            max(1, _MALLOC_THRESHOLD // 2 // per_prompt)
            if embeddings.device.type == "cpu"
            else len(model_points)
        )
        decoded = [
            _decode_point_prompts(self.model.prompt_encoder, decoder, embeddings, model_points[i : i + step])
            for i in range(0, len(model_points), step)
        ]
        low_res, iou_preds = torch.cat([d[0] for d in decoded]), torch.cat([d[1] for d in decoded])
        num_masks = low_res.shape[1]
        # Upsampled in the decoder's dtype: fp32 for parity, bf16/fp16 for speed.
        low_res = low_res.flatten(0, 1)  # (P * 3, mask_size, mask_size)
        upsample_h, upsample_w = upsample_h.to(low_res.dtype), upsample_w.to(low_res.dtype)
        iou_preds = iou_preds.flatten().float()  # (P * 3,)
        points = points.repeat_interleave(num_masks, dim=0)
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, points = low_res[keep], iou_preds[keep], points[keep.cpu()]

        k_h, k_w = upsample_h.shape[1], upsample_w.shape[1]
        low_res = low_res[:, :k_h, :k_w]
        crop_h, crop_w = upsample_h.shape[0], upsample_w.shape[0]
        chunk = max(1, self.max_chunk_pixels // (crop_h * crop_w))
        parts = []
        for start in range(0, low_res.shape[0], chunk):
            # Computed transposed, (n, crop_w, crop_h), so the column-major RLE reads memory in order;
            # `logits` is the (n, crop_h, crop_w) view of it.
            logits = (upsample_w @ low_res[start : start + chunk].transpose(1, 2) @ upsample_h.T).transpose(
                1, 2
            )
            stability = calculate_stability_score(logits, _MASK_THRESHOLD, self.stability_score_offset)
            keep = torch.ones_like(stability, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                keep = stability >= self.stability_score_thresh
                logits = logits[keep]
            masks = logits > _MASK_THRESHOLD
            del logits
            boxes = batched_mask_to_box(masks)
            not_at_edge = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            masks, boxes = masks[not_at_edge], boxes[not_at_edge]
            index = torch.arange(start, start + keep.shape[0], device=keep.device)[keep][not_at_edge]
            parts.append(
                {
                    "rles": rle_counts(masks),
                    "boxes": boxes.cpu(),
                    "iou_preds": iou_preds[index].cpu(),
                    "points": points[index.cpu()],
                    "stability_score": stability[keep][not_at_edge].cpu(),
                }
            )
        return _concat(parts)

    @staticmethod
    def _postprocess_small_regions(
        data: dict[str, Any], image_size: tuple[int, int], min_area: int, nms_thresh: float
    ) -> dict[str, Any]:
        """Fill small holes and drop small islands, then rerun box NMS preferring unchanged masks."""
        if len(data["rles"]) == 0:
            return data
        h, w = image_size
        masks, unchanged = [], []
        for counts in data["rles"]:
            mask = rle_to_mask({"size": [h, w], "counts": counts})
            mask, holes_changed = remove_small_regions(mask, min_area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, min_area, mode="islands")
            masks.append(mask)
            unchanged.append(not (holes_changed or islands_changed))
        scores = torch.tensor(unchanged, dtype=torch.float)
        boxes = torch.stack([batched_mask_to_box(torch.from_numpy(m)) for m in masks])
        keep = batched_nms(boxes.float(), scores, torch.zeros_like(scores), iou_threshold=nms_thresh)
        for i in keep.tolist():
            if not unchanged[i]:
                data["rles"][i] = rle_counts(torch.from_numpy(masks[i])[None])[0]
                data["boxes"][i] = boxes[i]
        return _filter(data, keep)

    def _compute_decoder(self) -> MaskDecoder:
        """The model's mask decoder in the compute dtype: a cast copy (a few MB) for bf16/fp16, so the
        decoder runs natively in that dtype instead of casting weights and activations op by op."""
        dtype = _PRECISIONS[self.precision]
        decoder = self.model.mask_decoder
        return (
            decoder
            if dtype is None or decoder.iou_token.weight.dtype == dtype
            else copy.deepcopy(decoder).to(dtype)
        )


def _decode_point_prompts(
    prompt_encoder: torch.nn.Module,
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    points: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder for `P` single foreground points on one image, re-associated for this case.

    Mathematically equal to `model(image_embeddings=..., input_points=..., multimask_output=True)`
    (float rounding aside), with about half the matrix work and few passes over the large `(P, N, C)`
    image-token tensors (N = h * w image tokens, T prompt tokens, H heads):

    - a prompt has a handful of tokens against thousands of image tokens, so the attention projections of
      image tokens are folded into the token side (`(x W_k^T) q = x (W_k^T q)`) and image tokens are never
      projected per prompt; the positional term `x + pe` is split into a per-prompt and a shared product;
    - every prompt sees the same image tokens in the first layer, so those products are shared;
    - residual additions and biases ride on the matrix products (`baddbmm`/`addmm`).

    It runs in the dtype of `decoder`'s weights (a bf16 copy gives the fast path on CPU).

    Args:
        prompt_encoder: the model's prompt encoder; decoder: its mask decoder (possibly a cast copy).
        image_embeddings: `(1, C, h, w)` embedding of the image.
        points: `(P, 2)` XY in the model frame.

    Returns:
        mask logits `(P, 3, 4h, 4w)` and IoU predictions `(P, 3)`, in the decoder's dtype.
    """
    transformer = decoder.transformer
    dtype = decoder.iou_token.weight.dtype
    num_prompts = points.shape[0]
    labels = torch.ones(num_prompts, 1, dtype=torch.long, device=points.device)
    # A single point gets SAM's padding point, a real token: no token is masked out of attention.
    sparse, _, dense = prompt_encoder(points[:, None, :], labels, None, None, num_prompts)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat([output_tokens.expand(num_prompts, -1, -1), sparse.to(dtype)], dim=1)  # (P, T, C)
    h, w = image_embeddings.shape[-2:]
    # Without a mask prompt the dense embedding is the same for every prompt.
    src = (image_embeddings.float() + dense[:1]).to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)
    key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2)  # (1, N, C)

    queries, keys = tokens, src  # keys: (1, N, C) in the first layer, (P, N, C) after it
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        keys_pe = keys + key_pe  # (1 or P, N, C): image tokens with positions, used by both attentions
        attended = _token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = _image_to_token(layer.cross_attn_image_to_token, keys_pe, keys, queries + tokens, queries)
        del keys_pe
        keys = layer.norm4(keys)
    attended = _token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attended)

    mask_tokens = queries[:, 2 : 1 + decoder.num_mask_tokens]  # the multimask outputs only
    mlps = decoder.output_hypernetworks_mlps[1:]
    hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mlps)], 1)  # (P, 3, C / 8)
    masks = _upscale_and_project(decoder.output_upscaling, keys, hyper_in, h, w)
    iou_pred = decoder.iou_prediction_head(queries[:, 0])
    return masks, iou_pred[:, 1:]


def _upscale_and_project(
    upscaling: torch.nn.Sequential, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """The decoder's 4x upscaling and mask projection, channels-last.

    A transposed convolution with kernel = stride = 2 is a linear map from each input pixel to its 2x2
    output block, so both are run as matrix products on `(P, N, C)` tokens in sub-pixel layout, and only
    the final `(P, M, 4h, 4w)` masks are rearranged into images.

    Args:
        keys: `(P, h * w, C)` image tokens after the transformer; hyper_in: `(P, M, C / 8)` mask weights.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    c1, c2 = conv1.out_channels, conv2.out_channels
    num_prompts, num_masks = hyper_in.shape[:2]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)  # (C, (a, b, c1))
    # Bias folded into the matrix product (addmm) instead of a separate pass over the activations.
    x = F.linear(keys, w1.T, conv1.bias.repeat(4)).view(num_prompts, -1, 4, c1)
    x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # (c1, (a', b', c2))
    x = act2(F.linear(x, w2.T, conv2.bias.repeat(4)).view(num_prompts, -1, 4, 4, c2))  # (P, N, ab, a'b', c2)
    masks = x.view(num_prompts, -1, c2) @ hyper_in.transpose(1, 2)  # (P, N * 16, M)
    # Output pixel (4i + 2a + a', 4j + 2b + b') of input pixel (i, j).
    masks = masks.view(num_prompts, h, w, 2, 2, 2, 2, num_masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(num_prompts, num_masks, 4 * h, 4 * w)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(B, L, D)` -> `(B, heads, L, D / heads)`."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _image_products(rows: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`rows @ keys^T (+ bias)`: rows `(P, R, C)`, keys `(1 or P, N, C)`, bias `(P, R, 1)` -> `(P, R, N)`.

    Shared keys (batch 1) take one matrix product for all prompts.
    """
    num_prompts, num_rows, dim = rows.shape
    if keys.shape[0] == 1:
        flat = rows.reshape(num_prompts * num_rows, dim)
        if bias is None:
            return (flat @ keys[0].T).view(num_prompts, num_rows, -1)
        return torch.addmm(bias.reshape(-1, 1), flat, keys[0].T).view(num_prompts, num_rows, -1)
    if bias is None:
        return torch.bmm(rows, keys.transpose(1, 2))
    return torch.baddbmm(bias, rows, keys.transpose(1, 2))


def _token_to_image(
    attn: torch.nn.Module, q_in: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Prompt tokens `(P, T, C)` attend to image tokens: keys (with positions) and values `(1 or P, N, C)`.

    Returns:
        `(P, T, C)`.
    """
    heads = attn.num_heads
    q = _split_heads(attn.q_proj(q_in), heads)  # (P, H, T, d)
    P, H, T, d = q.shape
    # q . (x W_k^T + b_k) = (q W_k) . x + const: the constant cancels in the softmax.
    w_k = attn.k_proj.weight.view(H, d, -1)  # (H, d, C)
    qk = torch.einsum("phtd,hdc->phtc", q * d**-0.5, w_k).reshape(P, H * T, -1)  # (P, H*T, C)
    probs = torch.softmax(_image_products(qk, keys), dim=-1)  # (P, H*T, N)
    if values.shape[0] == 1:
        mixed = (probs.view(P * H * T, -1) @ values[0]).view(P, H, T, -1)
    else:
        mixed = (probs @ values).view(P, H, T, -1)  # (P, H, T, C): attention-weighted image tokens
    w_v = attn.v_proj.weight.view(H, d, -1)
    # Rows of probs sum to 1, so the value bias passes through unchanged.
    out = torch.einsum("phtc,hdc->phtd", mixed, w_v) + attn.v_proj.bias.view(H, 1, d)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _image_to_token(
    attn: torch.nn.Module, queries: torch.Tensor, keys: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> torch.Tensor:
    """Image tokens attend to prompt tokens `(P, T, C)`: queries are the image tokens with positions and
    `keys` the image tokens themselves (the residual), both `(1 or P, N, C)`.

    Returns:
        `keys + attention output`, `(P, N, C)` (the residual of the block, before its norm); per-prompt
        `keys` are updated in place to save a pass over them.
    """
    heads = attn.num_heads
    k = _split_heads(attn.k_proj(k_in), heads)  # (P, H, T, d)
    v = _split_heads(attn.v_proj(v_in), heads)
    P, H, T, d = k.shape
    # (x W_q^T + b_q) . k = x . (W_q^T k) + b_q . k: fold the query projection into the few tokens.
    k = k * d**-0.5
    w_q = attn.q_proj.weight.view(H, d, -1)  # (H, d, C)
    folded = torch.einsum("hdc,phtd->phtc", w_q, k).reshape(P, H * T, -1)  # (P, H*T, C)
    bias = torch.einsum("hd,phtd->pht", attn.q_proj.bias.view(H, d), k).reshape(P, H * T, 1)
    scores = _image_products(folded, queries, bias)  # (P, H*T, N)
    # Softmax over each head's T tokens; the strided dimension keeps the long N axis contiguous.
    probs = torch.softmax(scores.view(P, H, T, -1), dim=2).view(P, H * T, -1)
    # Fold the output projection into the values: sum_h probs_h (v_h W_o,h^T). Each head's probabilities
    # sum to 1, so the output bias enters as bias / H on every head.
    w_o = attn.out_proj.weight.view(-1, H, d)  # (C, H, d)
    values = torch.einsum("phtd,chd->phtc", v, w_o) + attn.out_proj.bias / H
    if keys.shape[0] == 1:
        return torch.baddbmm(keys, probs.transpose(1, 2), values.flatten(1, 2))
    return keys.baddbmm_(probs.transpose(1, 2), values.flatten(1, 2))  # the caller's keys are not reused


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _keep_freed_memory_in_process() -> None:
    """Let glibc reuse freed blocks instead of handing them back to the kernel at once.

    Mask generation allocates and frees the same large activations (tens of MB) hundreds of times.
    glibc serves blocks above its mmap threshold with fresh mappings and returns freed memory at the top
    of the heap to the kernel, so every such tensor is page-faulted in again; on CPU that costs more than
    the arithmetic (the decoder runs ~1.7x faster without it). Raising the mmap and trim thresholds keeps
    freed blocks for reuse; `_release_freed_memory` returns them after `generate`. The setting is
    process-wide and persists (a no-op off glibc).
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MALLOC_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _MALLOC_KEEP)


def _release_freed_memory() -> None:
    """Return the freed heap memory that `_keep_freed_memory_in_process` kept to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _check_point_grid(grid: Any, index: int) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 2 or grid.shape[1] != 2:
        raise ValueError(f"point_grids[{index}] must have shape (num_points, 2), got {grid.shape}")
    if grid.size and (grid.min() < 0 or grid.max() > 1):
        raise ValueError(
            f"point_grids[{index}] must hold XY points normalised to [0, 1], got values in "
            f"[{grid.min():.3g}, {grid.max():.3g}]"
        )
    return grid


def _trimmed(matrix: torch.Tensor) -> torch.Tensor:
    """Drop the trailing low-res columns that only see padding (all-zero weights)."""
    used = int(torch.nonzero(matrix.abs().sum(0)).max()) + 1
    return matrix[:, :used].contiguous()


def _uncrop_counts(counts: np.ndarray, crop_box: list[int], orig_size: tuple[int, int]) -> np.ndarray:
    """RLE counts of a mask in the crop's frame -> counts of the zero-padded mask in the image frame."""
    x0, y0, x1, y1 = crop_box
    orig_h, orig_w = orig_size
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return counts
    mask = rle_to_mask({"size": [y1 - y0, x1 - x0], "counts": counts})
    full = np.zeros((orig_h, orig_w), dtype=bool)
    full[y0:y1, x0:x1] = mask
    return rle_counts(torch.from_numpy(full)[None])[0]


_EMPTY = {
    "rles": [],
    "boxes": torch.zeros(0, 4, dtype=torch.int64),
    "iou_preds": torch.zeros(0),
    "points": torch.zeros(0, 2, dtype=torch.float64),
    "stability_score": torch.zeros(0),
    "crop_boxes": torch.zeros(0, 4, dtype=torch.int64),
}


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-batch or per-crop mask data (lists of counts and tensors)."""
    keys = parts[0].keys() if parts else _EMPTY.keys()
    out = {}
    for key in keys:
        values = [part[key] for part in parts]
        if key == "rles":
            out[key] = [counts for value in values for counts in value]
        else:
            out[key] = torch.cat(values) if values else _EMPTY[key]
    return out


def _filter(data: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """Select masks by index or boolean tensor."""
    keep = keep.cpu()
    if keep.dtype == torch.bool:
        keep = keep.nonzero().flatten()
    indices = keep.tolist()
    return {key: [value[i] for i in indices] if key == "rles" else value[keep] for key, value in data.items()}
