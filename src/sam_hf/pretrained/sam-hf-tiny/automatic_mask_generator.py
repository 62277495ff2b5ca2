"""Automatic mask generation: prompt SAM with a grid of points, keep the good and distinct masks.

A drop-in replacement for `segment_anything.SamAutomaticMaskGenerator` (same arguments, same output
records) that does the expensive work once and only on what survives:

- the image embedding is computed once per crop (by `self.predictor`) and the decoder runs on many prompts
  per call through `sam_hf.modeling.fast_decoder.decode_point_prompts`, natively in bf16 when
  `precision="bf16"`;
- the predicted-IoU filter runs on the low-resolution logits (it does not depend on resolution);
- only the survivors are brought to full resolution, in bounded chunks, with one banded matrix product per
  axis equal to SAM's upsample-crop-resize post-processing; stability, binarisation, boxes and run-length
  encoding are vectorised over the chunk;
- masks are kept as compact run-length counts in the crop's frame (in a `MaskData`) and moved to the image
  frame only if they survive box NMS.

Large temporaries are bounded to `_MAX_TEMPORARY_BYTES` on CPU: glibc serves blocks up to its dynamic mmap
threshold (at most 32 MiB on 64-bit) from the heap and reuses them; larger ones are mapped afresh and
page-faulted in at every allocation.

(Over 400 lines: `generate()` and its per-crop and per-batch steps are one pipeline over shared settings; the
pure pieces live in `amg_utils` and the decoder path in `modeling.fast_decoder`.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms, box_area

from .images import to_rgb
from .rle import area_from_rle, coco_encode_rle, rle_counts, rle_to_mask
from .fast_decoder import decode_point_prompts
from .modeling_sam_hf import SamHFModel
from .processing_sam_hf import SamHFProcessor
from .amg_utils import (
    MaskData,
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

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["OUTPUT_MODES", "SamAutomaticMaskGenerator"]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_MAX_TEMPORARY_BYTES = 16 << 20


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Args:
        model: the `SamHFModel` to prompt, or a PEFT model wrapping one (adapters apply, merged or not);
            the generator runs on its device and does not modify it.
        points_per_side: points sampled along each side of the image (`points_per_side**2` prompts);
            `None` when `point_grids` is given.
        points_per_batch: prompts per step (decoded, then post-processed together); on CPU the decoder
            runs them in sub-batches whose largest activation stays under 16 MiB.
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
            encoder runs in that dtype on the predictor's own converted copy of its weights (see
            `SamPredictor(encoder_dtype=...)`), and the mask decoder and the upsampling of its logits run
            natively in that dtype on a cast copy of the decoder made at each `generate` (several times
            faster on CPUs with bf16 matrix units; masks differ slightly, see `benchmarks/bench_amg.py` for
            the agreement with fp32). The caller's model keeps its dtype.
        max_chunk_pixels: full-resolution logits held at once (bounds memory on large images); default
            16 MiB of float32 on CPU, 64 MiB on other devices.
        processor: the `SamHFProcessor` saved with the model (pixel statistics, sizes); by default the one
            matching `model.config`.
        hq_token_only: SAM-HQ's option (`SamPredictor.predict`): each point's mask is the HQ token's alone
            instead of it added to SAM's best; ValueError at `generate` for a model with SAM's decoder. SAM-HQ
            gives one mask per point (the official HQ generator's), SAM three.

    Attributes:
        predictor: a `SamPredictor` on the same model, as in the official generator (code written for it
            reaches the model as `mask_generator.predictor.model`); `model` and `processor` are its own.
    """

    def __init__(
        self,
        model: SamHFModel | PeftModel,
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
        max_chunk_pixels: int | None = None,
        processor: SamHFProcessor | None = None,
        hq_token_only: bool = False,
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
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {precision!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        self.predictor = SamPredictor(model, processor, encoder_dtype=_PRECISIONS[precision])
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
        self.hq_token_only = hq_token_only
        self.max_chunk_pixels = max_chunk_pixels

    @property
    def model(self) -> SamHFModel | PeftModel:
        """The model prompted, `self.predictor.model`."""
        return self.predictor.model

    @property
    def processor(self) -> SamHFProcessor:
        """The image and prompt processor, `self.predictor.processor`."""
        return self.predictor.processor

    @torch.inference_mode()
    def generate(
        self,
        image: np.ndarray,
        multimask_output: bool = True,
        image_features: dict[str, torch.Tensor] | None = None,
    ) -> list[dict[str, Any]]:
        """Generate masks for `image`.

        Args:
            image: an image in any form `sam_hf.data.images.to_rgb` reads (e.g. `(H, W, 3)` uint8 RGB).
            multimask_output: each point's candidates are the decoder's three ambiguity-aware masks (SAM; for
                SAM-HQ the best of them plus the HQ mask), or its single-mask output (SAM-HQ: plus the HQ mask),
                one per point. As `segment_anything_hq`'s `generate(image, multimask_output)`; the official
                SAM generator always uses the three.
            image_features: the features of the whole `image` by this model, by name, each with batch size 1,
                e.g. from a `SamPredictor` that holds them (`image_features`), used instead of encoding the
                image again; crops smaller than the image are still encoded. None: encode.

        Raises:
            ValueError: `multimask_output` is not a bool, or `image_features` are not what this model's decoder
                takes (`model.image_feature_names`), or the image embedding does not have the shape of this
                model's.

        Returns:
            One record per mask, in the official generator's format:
            `segmentation` (per `output_mode`), `area` (int pixels), `bbox` (XYWH list), `predicted_iou`,
            `point_coords` (`[[x, y]]`, the prompt in image pixels), `stability_score`, `crop_box` (XYWH list).
            `bbox` keeps the official generator's convention, width and height from the first to the last
            pixel's index (a one-pixel mask is `[x, y, 0, 0]`); COCO's box (pycocotools' `toBbox`, one more
            in each) is what the datasets and COCO files the package writes hold
            (`sam_hf.data.coco.annotation_geometry`).
        """
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise ValueError(
                f"multimask_output must be a bool (the second argument, as segment_anything_hq's), got "
                f"{type(multimask_output).__name__}; image features go by keyword: image_features=..."
            )
        image = to_rgb(image)
        if image_features is not None:
            config = self.model.config
            names = sorted(self.model.image_feature_names)
            if not isinstance(image_features, dict) or sorted(image_features) != names:
                got = (
                    sorted(image_features)
                    if isinstance(image_features, dict)
                    else type(image_features).__name__
                )
                raise ValueError(
                    f"image_features must be a dict of {names} (SamPredictor.image_features), got {got}"
                )
            grid = config.image_embedding_size
            expected = (1, config.mask_decoder_config.hidden_size, grid, grid)
            embedding_shape = tuple(image_features["image_embeddings"].shape)
            if embedding_shape != expected:
                raise ValueError(
                    f"image_features['image_embeddings'] must have shape {expected}, got {embedding_shape}"
                )
        data = self._generate_masks(image, image_features, multimask_output)
        if self.min_mask_region_area > 0:
            data = self._postprocess_small_regions(
                data,
                image.shape[:2],
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
            )
        records = []
        for i, counts in enumerate(data.rles):
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
                    "bbox": box_xyxy_to_xywh(data.boxes[i]).tolist(),
                    "predicted_iou": data.iou_preds[i].item(),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": data.stability_score[i].item(),
                    "crop_box": box_xyxy_to_xywh(data.crop_boxes[i]).tolist(),
                }
            )
        return records

    def _generate_masks(
        self, image: np.ndarray, image_features: dict[str, torch.Tensor] | None, multimask_output: bool
    ) -> MaskData:
        """Masks of every crop, duplicates between crops removed, run-length counts in the image frame."""
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        decoder = self._compute_decoder()
        data = MaskData.cat(
            [
                # layer 0 is the whole image, the one crop a given embedding is of
                self._process_crop(
                    image,
                    box,
                    layer,
                    orig_size,
                    decoder,
                    image_features if layer == 0 else None,
                    multimask_output,
                )
                for box, layer in zip(crop_boxes, layer_idxs, strict=True)
            ]
        )
        if len(crop_boxes) > 1 and len(data) > 0:
            # Prefer masks from smaller crops: they saw the object at higher resolution.
            scores = 1 / box_area(data.crop_boxes.float())
            keep = batched_nms(
                data.boxes.float(), scores, torch.zeros_like(scores), iou_threshold=self.crop_nms_thresh
            )
            data = data.filter(keep)
        data.rles = [
            _uncrop_counts(counts, box.tolist(), orig_size)
            for counts, box in zip(data.rles, data.crop_boxes, strict=True)
        ]
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
        decoder: nn.Module,
        features: dict[str, torch.Tensor] | None,
        multimask_output: bool,
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        crop_h, crop_w = crop.shape[:2]
        device = self.model.device
        if features is None:
            self.predictor.set_image(crop)
            features = self.predictor.image_features
            valid_h, valid_w = self.predictor.input_size
        else:
            features = {name: feature.to(device, torch.float32) for name, feature in features.items()}
            valid_h, valid_w = self.processor.get_preprocess_shape(crop_h, crop_w)
        mask_size, image_size = self.model.config.mask_size, self.model.config.image_size
        upsample_h = _BandedMap.of(upsampling_matrix(mask_size, image_size, valid_h, crop_h).to(device))
        upsample_w = _BandedMap.of(upsampling_matrix(mask_size, image_size, valid_w, crop_w).to(device))

        points = self.point_grids[layer_idx] * np.array([crop_w, crop_h])  # (N, 2) XY crop pixels
        model_points = self.processor.transform_coords(torch.as_tensor(points), (crop_h, crop_w))
        batches = [
            self._process_batch(
                decoder,
                features,
                model_points[start : start + self.points_per_batch].to(device, torch.float32),
                torch.as_tensor(points[start : start + self.points_per_batch]),
                upsample_h,
                upsample_w,
                crop_box,
                orig_size,
                multimask_output,
            )
            for start in range(0, len(points), self.points_per_batch)
        ]
        self.predictor.reset_image()
        data = MaskData.cat(batches)
        keep = batched_nms(
            data.boxes.float(),
            data.iou_preds,
            torch.zeros_like(data.iou_preds),
            iou_threshold=self.box_nms_thresh,
        )
        data = data.filter(keep)
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        return data

    def _process_batch(
        self,
        decoder: nn.Module,
        features: dict[str, torch.Tensor],
        model_points: torch.Tensor,
        points: torch.Tensor,
        upsample_h: _BandedMap,
        upsample_w: _BandedMap,
        crop_box: list[int],
        orig_size: tuple[int, int],
        multimask_output: bool,
    ) -> MaskData:
        """Decode one batch of point prompts and keep the masks that pass the filters.

        Args:
            features: the crop's image features by name (`image_embeddings` `(1, C, grid, grid)`, ...).
            model_points: `(P, 2)` XY prompts in the model frame; points: `(P, 2)` the same in crop pixels.
            upsample_h, upsample_w: the low-res -> crop-pixel maps of each axis.
        """
        # Decoded in sub-batches whose largest activation stays below `_MAX_TEMPORARY_BYTES` on CPU.
        grid_h, grid_w = features["image_embeddings"].shape[-2:]
        dim = decoder.iou_token.weight.shape[1]
        # bytes per prompt of the largest activation, the (16 h w, C / 8) upscaled map
        per_prompt = 2 * grid_h * grid_w * dim * decoder.iou_token.weight.element_size()
        step = (
            max(1, _MAX_TEMPORARY_BYTES // per_prompt)
            if features["image_embeddings"].device.type == "cpu"
            else len(model_points)
        )
        low_res, iou_preds = decode_point_prompts(
            self.model.prompt_encoder,
            decoder,
            features,
            model_points,
            chunk_size=step,
            hq_token_only=self.hq_token_only,
            multimask_output=multimask_output,
        )
        num_masks = low_res.shape[1]
        # Upsampled in the decoder's dtype: fp32 for parity, bf16/fp16 for speed.
        low_res = low_res.flatten(0, 1)  # (P * 3, mask_size, mask_size)
        upsample_h, upsample_w = upsample_h.to(low_res.dtype), upsample_w.to(low_res.dtype)
        iou_preds = iou_preds.flatten().float()  # (P * 3,)
        points = points.repeat_interleave(num_masks, dim=0)
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, points = low_res[keep], iou_preds[keep], points[keep.cpu()]

        crop_h, crop_w = upsample_h.size, upsample_w.size
        mask_threshold = self.model.mask_threshold
        chunk = max(1, self._max_chunk_pixels(low_res.device) // (crop_h * crop_w))
        parts = []
        for start in range(0, low_res.shape[0], chunk):
            # Computed transposed, (n, crop_w, crop_h), so the column-major RLE reads memory in order;
            # `logits` is the (n, crop_h, crop_w) view of it.
            logits = upsample_w.apply(upsample_h.apply(low_res[start : start + chunk]).transpose(1, 2))
            logits = logits.transpose(1, 2)
            stability = calculate_stability_score(logits, mask_threshold, self.stability_score_offset)
            keep = torch.ones_like(stability, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                keep = stability >= self.stability_score_thresh
                logits = logits[keep]
            masks = logits > mask_threshold
            del logits
            boxes = batched_mask_to_box(masks)
            not_at_edge = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            masks, boxes = masks[not_at_edge], boxes[not_at_edge]
            index = torch.arange(start, start + keep.shape[0], device=keep.device)[keep][not_at_edge]
            parts.append(
                MaskData(
                    rles=rle_counts(masks),
                    boxes=boxes.cpu(),
                    iou_preds=iou_preds[index].cpu(),
                    points=points[index.cpu()],
                    stability_score=stability[keep][not_at_edge].cpu(),
                    crop_boxes=torch.tensor([crop_box], dtype=torch.int64).repeat(len(masks), 1),
                )
            )
        return MaskData.cat(parts)

    def _max_chunk_pixels(self, device: torch.device) -> int:
        if self.max_chunk_pixels is not None:
            return self.max_chunk_pixels
        return _MAX_TEMPORARY_BYTES // 4 if device.type == "cpu" else 2**24

    @staticmethod
    def _postprocess_small_regions(
        data: MaskData, image_size: tuple[int, int], min_area: int, nms_thresh: float
    ) -> MaskData:
        """Fill small holes and drop small islands, then rerun box NMS preferring unchanged masks."""
        if len(data) == 0:
            return data
        h, w = image_size
        masks, unchanged = [], []
        for counts in data.rles:
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
                data.rles[i] = rle_counts(torch.from_numpy(masks[i])[None])[0]
                data.boxes[i] = boxes[i]
        return data.filter(keep)

    def _compute_decoder(self) -> nn.Module:
        """The model's mask decoder in the compute dtype: a cast copy (a few MB) for bf16/fp16, so the
        decoder runs natively in that dtype instead of casting weights and activations op by op."""
        dtype = _PRECISIONS[self.precision]
        decoder = self.model.mask_decoder
        return (
            decoder
            if dtype is None or decoder.iou_token.weight.dtype == dtype
            else copy.deepcopy(decoder).to(dtype)
        )


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


@dataclass
class _BandedMap:
    """An interpolation matrix `(out, in)` applied along an axis, block by block: each block of `rows`
    consecutive outputs reads only a window of `width` consecutive inputs (an interpolation matrix is zero
    outside a narrow band), so a product reads and multiplies the window instead of the whole axis. The
    weights are the matrix's own entries; the entries outside the windows are all zero."""

    weights: torch.Tensor  # (blocks, rows, width)
    index: torch.Tensor  # (blocks * width,) the input position of each window entry
    size: int  # out

    @classmethod
    def of(cls, matrix: torch.Tensor, rows: int = 32) -> _BandedMap:
        size, length = matrix.shape
        blocks = -(-size // rows)
        padding = matrix.new_zeros(blocks * rows - size, length)
        padded = torch.cat([matrix, padding]).view(blocks, rows, length)
        used = padded.ne(0).any(1)  # (blocks, in)
        positions = torch.arange(length, device=matrix.device)
        first = torch.where(used, positions, length).amin(1).clamp(max=length - 1)
        last = torch.where(used, positions, -1).amax(1).clamp(min=0)
        width = int((last - first).clamp(min=0).max()) + 1
        windows = first.clamp(max=length - width)[:, None] + positions[:width]  # (blocks, width)
        weights = padded.gather(2, windows[:, None, :].expand(-1, rows, -1))
        return cls(weights, windows.flatten(), size)

    def to(self, dtype: torch.dtype) -> _BandedMap:
        return _BandedMap(self.weights.to(dtype), self.index, self.size)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """`(n, in, m)` -> `(n, out, m)`: `matrix @ x`, along the second axis."""
        blocks, rows, width = self.weights.shape
        windows = x.index_select(1, self.index).view(x.shape[0], blocks, width, x.shape[2])
        out = (self.weights @ windows).view(x.shape[0], blocks * rows, x.shape[2])
        return out[:, : self.size].contiguous()


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
