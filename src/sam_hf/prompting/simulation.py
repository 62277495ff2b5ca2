"""Seeded prompt simulation from binary masks, following the SAM paper's interactive training setup.

All functions take a `np.random.Generator`, so a prompt is reproducible from its seed. Coordinates are XY
pixels of the mask's image (x = column, y = row); boxes are XYXY with inclusive pixel corners.
"""

from __future__ import annotations

import numpy as np

from .batching import PAD_LABEL

__all__ = [
    "correction_clicks",
    "distance_transform",
    "sample_box",
    "sample_brush_stroke",
    "sample_correction_click",
    "sample_points",
]


def _check_mask(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool)


def _require_nonempty(mask: np.ndarray, name: str) -> None:
    if not mask.any():
        raise ValueError(f"{name} must contain at least one foreground pixel, got an empty mask")


def sample_box(
    mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1, max_jitter: float = 20.0
) -> np.ndarray:
    """Bounding box of `mask` with each coordinate moved by noise, as in the SAM paper.

    Args:
        mask: `(H, W)` binary mask with at least one foreground pixel.
        rng: source of randomness.
        jitter: standard deviation of the noise as a fraction of the box side (x for x-coordinates,
            y for y-coordinates).
        max_jitter: the noise of each coordinate is clipped to this many pixels.

    Returns:
        `(4,)` float box XYXY, clipped to the image bounds `[0, W-1] x [0, H-1]` and with x0 <= x1, y0 <= y1.
    """
    mask = _check_mask(mask, "mask")
    _require_nonempty(mask, "mask")
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    noise = np.clip(rng.normal(0.0, 1.0, size=4) * jitter * sides, -max_jitter, max_jitter)
    box = box + noise
    box[[0, 2]] = np.clip(box[[0, 2]], 0, width - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, height - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def _pick_pixels(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct pixels of `region` (with replacement only if it has fewer), as `(count, 2)` XY."""
    ys, xs = np.nonzero(region)
    index = rng.choice(len(xs), size=count, replace=count > len(xs))
    return np.stack([xs[index], ys[index]], axis=-1).astype(np.float32)


def sample_points(
    mask: np.ndarray,
    rng: np.random.Generator,
    num_positive: int = 1,
    num_negative: int = 0,
    margin: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Random positive points inside the object and negative points near it.

    Negative points are drawn from the background inside the object's box enlarged by `margin` times its
    side on each side; if that band is empty, from the whole background.

    Args:
        mask: `(H, W)` binary mask with at least one foreground pixel.
        rng: source of randomness.
        num_positive: points inside the mask (label 1).
        num_negative: points outside the mask (label 0); requires some background.
        margin: size of the band around the box for negatives, as a fraction of the box side.

    Returns:
        `coords (N, 2)` float XY pixel centres and `labels (N,)` int64, positives first, N = num_positive + num_negative.
    """
    mask = _check_mask(mask, "mask")
    _require_nonempty(mask, "mask")
    if num_positive < 0 or num_negative < 0 or num_positive + num_negative == 0:
        raise ValueError(
            f"num_positive and num_negative must be >= 0 with a positive sum, got {num_positive} and {num_negative}"
        )
    coords = [_pick_pixels(mask, num_positive, rng)] if num_positive else []
    if num_negative:
        background = ~mask
        if not background.any():
            raise ValueError("mask covers the whole image, so no negative point can be sampled")
        ys, xs = np.nonzero(mask)
        pad_y = int(np.ceil(margin * (ys.max() - ys.min() + 1)))
        pad_x = int(np.ceil(margin * (xs.max() - xs.min() + 1)))
        band = np.zeros_like(mask)
        band[
            max(ys.min() - pad_y, 0) : ys.max() + pad_y + 1, max(xs.min() - pad_x, 0) : xs.max() + pad_x + 1
        ] = True
        band &= background
        coords.append(_pick_pixels(band if band.any() else background, num_negative, rng))
    labels = np.array([1] * num_positive + [0] * num_negative, dtype=np.int64)
    return np.concatenate(coords, axis=0), labels


def distance_transform(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of `region` to the nearest pixel outside it (0 outside).

    The image border counts as outside, so a region touching the border has small distances there. Exact
    two-pass algorithm (Felzenszwalb & Huttenlocher), vectorised over rows/columns with numpy.

    Args:
        region: `(H, W)` binary mask.

    Returns:
        `(H, W)` float64 distances.
    """
    region = _check_mask(region, "region")
    padded = np.pad(region, 1, constant_values=False)
    big = float(sum(padded.shape) ** 2)
    squared = np.where(padded, big, 0.0)
    squared = _lower_envelope(squared)  # along columns (axis 0)
    squared = _lower_envelope(squared.T).T  # along rows
    return np.sqrt(squared[1:-1, 1:-1])


def _lower_envelope(f: np.ndarray) -> np.ndarray:
    """1D squared distance transform along axis 0 for all columns: d[i] = min_j f[j] + (i - j)^2.

    O(n^2) per column in memory-bounded chunks; fine for mask resolutions (<= 1024).
    """
    n = f.shape[0]
    index = np.arange(n, dtype=np.float64)
    penalty = (index[:, None] - index[None, :]) ** 2  # (n_out, n_in)
    out = np.empty_like(f)
    chunk = max(1, (1 << 24) // max(n * n, 1))
    for start in range(0, f.shape[1], chunk):
        block = f[:, start : start + chunk]  # (n_in, c)
        out[:, start : start + chunk] = (penalty[:, :, None] + block[None, :, :]).min(axis=1)
    return out


def _errors(
    pred_mask: np.ndarray, gt_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both masks as bool, checked to share one shape, and the false negatives and false positives."""
    pred_mask = _check_mask(pred_mask, "pred_mask")
    gt_mask = _check_mask(gt_mask, "gt_mask")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"pred_mask and gt_mask must have the same shape, got {pred_mask.shape} and {gt_mask.shape}"
        )
    return pred_mask, gt_mask, gt_mask & ~pred_mask, pred_mask & ~gt_mask


def sample_correction_click(
    pred_mask: np.ndarray, gt_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """A corrective click from the error of a previous prediction, as in SAM's interactive training.

    The error regions are the false negatives (`gt & ~pred`) and the false positives (`pred & ~gt`); the
    click goes to the larger one: label 1 in false negatives, label 0 in false positives. It is placed at a
    pixel farthest from the region's boundary (the interior of the error), ties broken at random by `rng`.

    Args:
        pred_mask: `(H, W)` binary previous prediction.
        gt_mask: `(H, W)` binary ground truth.
        rng: source of randomness.

    Returns:
        `coord (2,)` float XY and `label` (1 or 0). If the prediction is perfect, a random positive point
        inside `gt_mask` (which must not be empty then).
    """
    pred_mask, gt_mask, false_neg, false_pos = _errors(pred_mask, gt_mask)
    if not false_neg.any() and not false_pos.any():
        _require_nonempty(gt_mask, "gt_mask")
        coords, _ = sample_points(gt_mask, rng, num_positive=1)
        return coords[0], 1
    positive = int(false_neg.sum()) >= int(false_pos.sum())
    region = false_neg if positive else false_pos
    # Exact on the region's bounding box: outside it nothing is in the region, so the nearest outside pixel
    # of any region pixel is in the box or on its one-pixel frame, which `distance_transform` pads with.
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    top, left = rows[0], cols[0]
    distance = distance_transform(region[top : rows[-1] + 1, left : cols[-1] + 1])
    ys, xs = np.nonzero(distance == distance.max())
    pick = rng.integers(len(xs))
    return np.array([xs[pick] + left, ys[pick] + top], dtype=np.float32), int(positive)


def sample_brush_stroke(
    pred_mask: np.ndarray, gt_mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float, bool]:
    """A dab of a round brush or eraser that an annotator makes to fix a mask the clicks left wrong.

    In the larger error region (false negatives `gt & ~pred`: the brush; false positives `pred & ~gt`: the
    eraser), the dab goes where the largest disc fits that changes no correctly labelled pixel to wrong: for
    the brush, the false-negative pixel farthest from the ground truth's outside; for the eraser, the
    false-positive pixel farthest from the ground truth. Its radius is that distance less half a pixel, so
    every pixel the disc covers becomes right (a disc of radius 0.5 covers its centre pixel alone). Ties are
    broken at random by `rng`. SA-1B's annotators refined masks with such pixel-precise brush and eraser tools
    (Kirillov et al., "Segment Anything", 2023, appendix B).

    Args:
        pred_mask: `(H, W)` binary mask shown.
        gt_mask: `(H, W)` binary ground truth.
        rng: source of randomness.

    Returns:
        `coord (2,)` float32 XY pixels of the centre, `radius` in pixels (>= 0.5) and `erase`.

    Raises:
        ValueError: the masks' shapes differ, or the mask already equals the ground truth.
    """
    pred_mask, gt_mask, false_neg, false_pos = _errors(pred_mask, gt_mask)
    if not false_neg.any() and not false_pos.any():
        raise ValueError("pred_mask already equals gt_mask: there is nothing to paint")
    erase = int(false_pos.sum()) > int(false_neg.sum())
    region = false_pos if erase else false_neg
    safe = distance_transform(~gt_mask if erase else gt_mask)
    depth = np.where(region, safe, 0.0)
    ys, xs = np.nonzero(depth == depth.max())
    pick = rng.integers(len(xs))
    radius = max(float(depth.max()) - 0.5, 0.5)
    return np.array([xs[pick], ys[pick]], dtype=np.float32), radius, erase


def correction_clicks(
    pred_masks: np.ndarray, gt_masks: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One round of correction clicks for a batch of objects: `sample_correction_click` per object.

    An object whose prediction already equals its ground truth, or that is not `valid` (a padded prompt),
    gets no click: its label is `PAD_LABEL`, so appending the round with `batching.append_points` keeps the
    batch rectangular without prompting that object again. An empty ground truth under a non-empty
    prediction gets a negative click.

    Args:
        pred_masks: `(..., H, W)` binary previous predictions.
        gt_masks: `(..., H, W)` binary ground truths, same shape.
        rng: source of randomness, drawn from in object order.
        valid: `(...)` bool, False for objects to skip; default all.

    Returns:
        `coords (..., 2)` float32 XY pixels of the masks' grid (zero for no click) and `labels (...)` int64.
    """
    pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
    if pred_masks.shape != gt_masks.shape or pred_masks.ndim < 2:
        raise ValueError(
            "pred_masks and gt_masks must be (..., H, W) masks of one shape, "
            f"got {pred_masks.shape} and {gt_masks.shape}"
        )
    batch = pred_masks.shape[:-2]
    valid = np.ones(batch, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != batch:
        raise ValueError(f"valid must have the masks' batch shape {batch}, got {valid.shape}")
    coords = np.zeros((*batch, 2), dtype=np.float32)
    labels = np.full(batch, PAD_LABEL, dtype=np.int64)
    for index in np.ndindex(*batch):
        pred, gt = pred_masks[index], gt_masks[index]
        if valid[index] and not np.array_equal(pred, gt):
            coords[index], labels[index] = sample_correction_click(pred, gt, rng)
    return coords, labels
