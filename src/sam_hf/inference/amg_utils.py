"""Utilities for automatic mask generation: the container of candidate masks (`MaskData`), and pure
functions for point grids, crop boxes, stability scores, boxes and small-region removal (the RLE codec is
`sam_hf.data.rle`).

Names and conventions follow `segment_anything.utils.amg` so code written against it keeps working:
masks are `(N, H, W)` bool, boxes are XYXY in pixels (`int64` when computed from masks), crop boxes are
`[x0, y0, x1, y1]` lists. Everything is vectorised in torch or numpy; OpenCV is not needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MaskData",
    "batched_mask_to_box",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "calculate_stability_score",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "label_connected_components",
    "remove_small_regions",
    "uncrop_boxes_xyxy",
    "uncrop_points",
    "upsampling_matrix",
]


@dataclass
class MaskData:
    """Candidate masks of the automatic mask generator, one row per mask in every field.

    Built per prompt batch, concatenated per crop and over crops, and filtered by index as the generator's
    filters and NMS steps drop masks. Empty parts (a batch where nothing survived) have the same fields, so
    `cat` and `filter` need no special case.

    Attributes:
        rles: run-length counts (see `rle_counts`) of each mask, in the frame of its crop until the
            generator moves them to the image frame.
        boxes: `(N, 4)` int64 XYXY boxes of the masks, inclusive max edges.
        iou_preds: `(N,)` float32 predicted IoU.
        points: `(N, 2)` float64 XY point prompt of each mask.
        stability_score: `(N,)` float32 stability score.
        crop_boxes: `(N, 4)` int64 XYXY crop box of each mask, in image pixels.
    """

    rles: list[np.ndarray] = field(default_factory=list)
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))
    iou_preds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))
    stability_score: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.int64))

    def __post_init__(self) -> None:
        lengths = {f.name: len(getattr(self, f.name)) for f in fields(self)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"every MaskData field must have one row per mask, got lengths {lengths}")

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def cat(cls, parts: list[MaskData]) -> MaskData:
        """Concatenate the rows of `parts` in order (an empty list gives an empty container)."""
        if not parts:
            return cls()
        columns = {}
        for f in fields(cls):
            values = [getattr(part, f.name) for part in parts]
            columns[f.name] = (
                [row for value in values for row in value] if f.name == "rles" else torch.cat(values)
            )
        return cls(**columns)

    def filter(self, keep: torch.Tensor) -> MaskData:
        """The rows selected by `keep`: `(N,)` bool, or int64 indices (in that order)."""
        keep = keep.cpu()
        if keep.dtype == torch.bool:
            keep = keep.nonzero().flatten()
        columns = {}
        for f in fields(self):
            value = getattr(self, f.name)
            columns[f.name] = [value[i] for i in keep.tolist()] if f.name == "rles" else value[keep]
        return MaskData(**columns)


def build_point_grid(n_per_side: int) -> np.ndarray:
    """`(n_per_side**2, 2)` XY points evenly spaced in [0, 1] x [0, 1], cell centres, row by row."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One point grid per crop layer; layer i has `int(n_per_side / scale_per_layer**i)` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes `[x0, y0, x1, y1]` for the whole image (layer 0) and `(2**i)**2` overlapping crops for
    each layer i >= 1, with the layer index of each box.

    Args:
        im_size: `(H, W)` of the image.
        n_layers: number of crop layers beyond the full image.
        overlap_ratio: overlap of neighbouring crops in layer 1 as a fraction of the short side; deeper
            layers scale it down with the crop size.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes, layer_idxs = [[0, 0, im_w, im_h]], [0]
    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = int(math.ceil((overlap * (n_crops_per_side - 1) + im_w) / n_crops_per_side))
        crop_h = int(math.ceil((overlap * (n_crops_per_side - 1) + im_h) / n_crops_per_side))
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """`(..., 4)` XYXY boxes in crop pixels -> image pixels."""
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """`(..., 2)` XY points in crop pixels -> image pixels."""
    return points + torch.tensor(crop_box[:2], device=points.device)


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """`(N,)` bool: the box (crop pixels) touches an edge of the crop that is not an edge of the image."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop[None], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig[None], atol=atol, rtol=0)
    return (near_crop_edge & ~near_image_edge).any(dim=1)


def box_xyxy_to_xywh(box_xyxy: torch.Tensor) -> torch.Tensor:
    """`(..., 4)` XYXY -> XYWH (a new tensor)."""
    return torch.cat([box_xyxy[..., :2], box_xyxy[..., 2:] - box_xyxy[..., :2]], dim=-1)


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """`(..., H, W)` bool masks -> `(..., 4)` int64 XYXY boxes with inclusive max edges; `[0, 0, 0, 0]` for
    an empty mask."""
    h, w = masks.shape[-2:]
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    # A max over bytes: torch's `any` on bool runs a slow generic reduction on the CPU (~50x here).
    as_bytes = masks.view(torch.uint8)
    rows = as_bytes.amax(dim=-1).bool()  # (..., H)
    cols = as_bytes.amax(dim=-2).bool()  # (..., W)

    def edges(present: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        coords = torch.arange(size, device=present.device)
        high = (present * coords).amax(dim=-1)
        low = torch.where(present, coords, size).amin(dim=-1)
        return low, high

    top, bottom = edges(rows, h)
    left, right = edges(cols, w)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    empty = ~rows.any(dim=-1)
    return boxes.masked_fill(empty.unsqueeze(-1), 0)


def calculate_stability_score(
    masks: torch.Tensor, mask_threshold: float, threshold_offset: float
) -> torch.Tensor:
    """`(..., H, W)` mask logits -> `(...)` IoU between the masks binarised at `threshold +- offset`.

    The high-threshold mask is contained in the low-threshold one, so the IoU is a ratio of areas.
    """
    return _count_true(masks > mask_threshold + threshold_offset) / _count_true(
        masks > mask_threshold - threshold_offset
    )


def _count_true(masks: torch.Tensor) -> torch.Tensor:
    """`(..., H, W)` bool -> `(...)` int64 count of True, without materialising a wide integer copy:
    bytes are summed along the last axis into int16 (int32 beyond 32767 columns), then along the other."""
    row_dtype = torch.int16 if masks.shape[-1] < 2**15 else torch.int32
    return masks.view(torch.uint8).sum(dim=-1, dtype=row_dtype).sum(dim=-1, dtype=torch.int64)


def upsampling_matrix(low_res: int, padded: int, valid: int, out: int) -> torch.Tensor:
    """`(out, low_res)` linear map along one axis equal to SAM's mask post-processing: bilinear upsampling
    (`align_corners=False`) from `low_res` to the padded model side `padded`, cropping to the `valid`
    (unpadded) length, then bilinear resizing to the original length `out`.

    Applying it on both axes, `A_h @ logits @ A_w.T`, gives the same logits as the two `F.interpolate`
    calls up to float rounding, as one matrix product and without the padded intermediate.
    """
    # float32 like the masks, so the interpolation weights are bit-identical to those F.interpolate uses.
    identity = torch.eye(low_res)[:, None, :]  # (low_res, 1, low_res): one signal per input
    upsampled = F.interpolate(identity, size=padded, mode="linear", align_corners=False)[..., :valid]
    resized = F.interpolate(upsampled, size=out, mode="linear", align_corners=False)
    return resized[:, 0].T.contiguous()


def label_connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a `(H, W)` bool mask.

    Works on horizontal runs: runs in neighbouring rows that touch (8-connectivity) are joined by a
    vectorised union-find (min-label propagation with pointer jumping).

    Returns:
        labels: `(H, W)` int64, 0 for background and 1..K for the components (in raster order of their
            first run);
        sizes: `(K,)` pixel count of each component (`sizes[k - 1]` for label k).
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    row_change = np.diff(padded, axis=1)  # +1 at a run start, -1 one past its end
    start_rows, starts = np.nonzero(row_change == 1)
    _, ends = np.nonzero(row_change == -1)  # exclusive ends, same (row-major) order as the starts
    num_runs = len(starts)
    if num_runs == 0:
        return np.zeros((h, w), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Run j in row r+1 touches run i in row r when start_j <= end_i and end_j >= start_i (8-connected,
    # exclusive ends). Runs of a row are sorted, so the partners of run i form a contiguous index range.
    stride = w + 2
    key_start = start_rows * stride + starts
    key_end = start_rows * stride + ends
    first = np.searchsorted(key_end, (start_rows + 1) * stride + starts, side="left")
    last = np.searchsorted(key_start, (start_rows + 1) * stride + ends, side="right")
    num_partners = np.maximum(last - first, 0)
    src = np.repeat(np.arange(num_runs), num_partners)
    offsets = np.arange(len(src)) - np.repeat(np.cumsum(num_partners) - num_partners, num_partners)
    dst = np.repeat(first, num_partners) + offsets
    parent = np.arange(num_runs)
    while True:
        low = np.minimum(parent[src], parent[dst])
        updated = parent.copy()
        np.minimum.at(updated, src, low)
        np.minimum.at(updated, dst, low)
        updated = updated[updated]
        if np.array_equal(updated, parent):
            break
        parent = updated
    roots, run_labels = np.unique(parent, return_inverse=True)
    run_lengths = ends - starts
    sizes = np.bincount(run_labels, weights=run_lengths, minlength=len(roots)).astype(np.int64)
    labels = np.zeros((h, w), dtype=np.int64)
    run_ids = np.repeat(np.arange(num_runs), run_lengths)
    cols = np.arange(run_lengths.sum()) - np.repeat(np.cumsum(run_lengths) - run_lengths, run_lengths)
    labels[start_rows[run_ids], starts[run_ids] + cols] = run_labels[run_ids] + 1
    return labels, sizes


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`mode="islands"`) smaller than `area_thresh` pixels
    in a `(H, W)` bool mask, 8-connected. Dropping islands keeps the largest one if all are small.

    Returns:
        the new mask and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    labels, sizes = label_connected_components(mask ^ fill_holes)
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = np.setdiff1d(np.arange(1, len(sizes) + 1), small)
    if len(keep) == 0:
        keep = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, keep), True
