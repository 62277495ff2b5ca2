"""Ragged point prompts -> rectangular arrays, padded with the model's one padding label.

Objects (prompts) carry different numbers of points: a 1-point prompt next to a 3-point one, a box prompt
with no points, an object that got no correction click this round. The model takes rectangular
`(..., num_points, 2)` coordinates and `(..., num_points)` labels; a point labelled `PAD_LABEL` is masked
out of the decoder's attention exactly, so padding changes no real prompt's masks. `PAD_LABEL` is defined
once, by the prompt encoder (`sam_hf.modeling.prompt_encoder`), and every producer of padded prompts (the
processor, the training collator, evaluation, pretraining) pads here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .prompt_encoder import PAD_LABEL

__all__ = ["PAD_LABEL", "append_points", "pad_points"]


def pad_points(
    prompts: Sequence[tuple[np.ndarray, np.ndarray]], num_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-object point lists into `(num_objects, num_points, 2)` coords and `(num_objects, num_points)`
    labels.

    Args:
        prompts: per object, `(coords (N_i, 2), labels (N_i,))`: XY points (any frame; copied as they are)
            and their labels, as `simulation.sample_points` returns them. `N_i` may be 0 (an object prompted
            without points, e.g. by a box, or a padded object).
        num_points: width of the result; default the longest list, at least 1 (a model input needs one).

    Returns:
        `coords (num_objects, num_points, 2)` float32, zero where padded, and `labels (num_objects,
        num_points)` int64, `PAD_LABEL` where padded; each object's points first, in their order.
    """
    coords = [np.asarray(c, dtype=np.float32).reshape(-1, 2) for c, _ in prompts]
    labels = [np.asarray(lab, dtype=np.int64).reshape(-1) for _, lab in prompts]
    lengths = [len(lab) for lab in labels]
    for i, (c, n) in enumerate(zip(coords, lengths, strict=True)):
        if len(c) != n:
            raise ValueError(
                f"prompts[{i}] must hold as many coords as labels, got {len(c)} coords and {n} labels"
            )
    longest = max(lengths, default=0)
    if num_points is None:
        num_points = max(longest, 1)
    elif num_points < longest:
        raise ValueError(f"num_points must be at least the longest point list ({longest}), got {num_points}")
    out_coords = np.zeros((len(coords), num_points, 2), dtype=np.float32)
    out_labels = np.full((len(coords), num_points), PAD_LABEL, dtype=np.int64)
    for i, (c, lab) in enumerate(zip(coords, labels, strict=True)):
        out_coords[i, : len(lab)] = c
        out_labels[i, : len(lab)] = lab
    return out_coords, out_labels


def append_points(coords, labels, new_coords, new_labels):
    """Append one point per object to padded prompts (a correction click round).

    Works on numpy arrays and torch tensors alike (the result has the type of `coords`).

    Args:
        coords: `(..., N, 2)` padded points; labels: `(..., N)`.
        new_coords: `(..., 2)` one point per object; new_labels: `(...)`, `PAD_LABEL` for an object that
            gets no point this round.

    Returns:
        `(..., N + 1, 2)` coords and `(..., N + 1)` labels.
    """
    if hasattr(coords, "new_tensor"):  # torch
        import torch

        new_coords = torch.as_tensor(new_coords).to(coords)
        new_labels = torch.as_tensor(new_labels).to(labels)
        return torch.cat([coords, new_coords[..., None, :]], -2), torch.cat(
            [labels, new_labels[..., None]], -1
        )
    new_coords = np.asarray(new_coords, dtype=coords.dtype)
    new_labels = np.asarray(new_labels, dtype=labels.dtype)
    return (
        np.concatenate([coords, new_coords[..., None, :]], axis=-2),
        np.concatenate([labels, new_labels[..., None]], axis=-1),
    )
