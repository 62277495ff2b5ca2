"""The run-length encoding (RLE) codec of masks, in COCO's conventions.

A mask `(H, W)` is flattened column-major (Fortran order) and stored as run lengths that start with a run
of zeros (possibly empty), in one of two forms:
    * uncompressed: `{"size": [H, W], "counts": [int, ...]}`, what the official automatic mask generator
      outputs for `output_mode="uncompressed_rle"`;
    * compressed: `{"size": [H, W], "counts": str}` (or bytes), COCO's string encoding, what
      `pycocotools.mask.encode` writes and COCO JSON files hold.

Masks are encoded here (`rle_counts`), all masks of a batch in one pass on their device, because the
automatic mask generator keeps uncompressed counts, which pycocotools cannot output, and reads GPU masks
without copying them to the host. The compressed form, its decoding and areas go through pycocotools;
uncompressed counts are decoded in numpy (one `np.repeat`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

__all__ = [
    "area_from_rle",
    "coco_encode_rle",
    "mask_to_rle",
    "mask_to_rle_pytorch",
    "rle_counts",
    "rle_to_mask",
]


def rle_counts(masks: torch.Tensor) -> list[np.ndarray]:
    """`(N, H, W)` bool masks -> the uncompressed RLE counts of each as an int64 array.

    Runs are found for all masks in one pass on the masks' device (in numpy for CPU tensors); only the
    change positions are copied to the host. A mask stored transposed (`(N, W, H)` memory viewed as
    `(N, H, W)`) is read in order.
    """
    n, h, w = masks.shape
    if n == 0:
        return []
    flat = masks.transpose(1, 2).reshape(n, h * w)
    # numpy finds the nonzeros of a bool array several times faster than torch on the CPU
    per_mask, positions = (_changes_numpy if flat.device.type == "cpu" else _changes_torch)(flat)
    starts_with_one = flat[:, 0].cpu().numpy()
    out = []
    for i, change_pos in enumerate(np.split(positions, np.cumsum(per_mask)[:-1])):
        # A leading zero-length run keeps the convention that counts start with background.
        head = [0, 0] if starts_with_one[i] else [0]
        out.append(np.diff(np.concatenate([head, change_pos, [h * w]])))
    return out


def _changes_torch(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`(N, L)` bool -> changes per mask `(N,)` and, mask after mask, the positions where a new run starts."""
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()  # (K, 2): mask index, position before the change
    per_mask = torch.bincount(changes[:, 0], minlength=flat.shape[0]).cpu().numpy()
    return per_mask, (changes[:, 1] + 1).cpu().numpy()


def _changes_numpy(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`_changes_torch` for a CPU tensor, in numpy."""
    array = flat.numpy()
    changes = np.flatnonzero(array[:, 1:] != array[:, :-1])  # flat index into (N, L - 1)
    mask_index, before = np.divmod(changes, array.shape[1] - 1)
    return np.bincount(mask_index, minlength=array.shape[0]), before + 1


def mask_to_rle_pytorch(masks: torch.Tensor) -> list[dict[str, Any]]:
    """`(N, H, W)` bool masks -> uncompressed RLE dicts (as the official `mask_to_rle_pytorch`)."""
    h, w = masks.shape[-2:]
    return [{"size": [h, w], "counts": counts.tolist()} for counts in rle_counts(masks)]


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """`(H, W)` bool mask -> compressed RLE `{"size": [H, W], "counts": str}` (`pycocotools.mask.encode`)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed or compressed RLE -> `(H, W)` bool mask.

    Raises:
        ValueError: if `rle` is not an RLE dict or its counts do not cover `H * W` pixels.
    """
    height, width = _size(rle)
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return mask_utils.decode(_as_compressed(rle)).astype(bool)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.sum() != height * width or (counts < 0).any():
        raise ValueError(
            f"rle counts must be non-negative run lengths summing to H*W = {height * width}, got "
            f"{counts.size} counts summing to {int(counts.sum())}"
        )
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def area_from_rle(rle: dict[str, Any]) -> int:
    """Foreground pixels of an uncompressed or compressed RLE."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return int(mask_utils.area(_as_compressed(rle)))
    return int(sum(counts[1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> compressed `{"size": [H, W], "counts": str}` (JSON-serialisable), as the official
    generator's `coco_encode_rle`."""
    height, width = _size(rle)
    encoded = mask_utils.frPyObjects({"size": [height, width], "counts": list(rle["counts"])}, height, width)
    return {"size": [height, width], "counts": encoded["counts"].decode("utf-8")}


def _size(rle: Any) -> tuple[int, int]:
    if not isinstance(rle, dict) or "counts" not in rle or len(rle.get("size") or ()) != 2:
        raise ValueError(f'rle must be a dict {{"size": [H, W], "counts": ...}}, got {rle!r:.200}')
    height, width = (int(v) for v in rle["size"])
    return height, width


def _as_compressed(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(_size(rle)), "counts": counts.encode() if isinstance(counts, str) else counts}
