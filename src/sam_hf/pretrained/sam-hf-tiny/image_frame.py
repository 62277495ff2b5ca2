"""SAM's square model frame: normalise and pad a resized image into it, bring mask logits back out of it.

The one home of this arithmetic: `SamHFProcessor` (`normalize_and_pad`, `upscale_masks`) and the official-API
methods of `SamHFModel` (`preprocess`, `postprocess_masks`) call these. Here, in `modeling/`, so that the model
can use them where only the modeling files travel (remote code). The operations and statistics are those of
the official `segment_anything.modeling.Sam.preprocess` / `postprocess_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "normalize_and_pad", "upscale_masks"]

# RGB statistics on the 0-255 scale that SAM was trained with (the ImageNet mean and std).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_and_pad(
    resized_images: torch.Tensor, image_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> torch.Tensor:
    """`(batch_size, 3, h, w)` resized RGB on the 0-255 scale (any dtype), `h, w <= image_size` -> normalised,
    zero-padded `(batch_size, 3, image_size, image_size)` float32 (padding at the bottom and right)."""
    height, width = resized_images.shape[-2:]
    mean = torch.tensor(pixel_mean, device=resized_images.device).view(-1, 1, 1)
    std = torch.tensor(pixel_std, device=resized_images.device).view(-1, 1, 1)
    normalized = (resized_images.float() - mean) / std
    return F.pad(normalized, (0, image_size - width, 0, image_size - height))


def upscale_masks(
    masks: torch.Tensor, image_size: int, input_size: Sequence[int], original_size: Sequence[int]
) -> torch.Tensor:
    """`(N, C, mask_size, mask_size)` logits -> `(N, C, H, W)` float32 logits at `original_size` `(H, W)`:
    bilinear to the `image_size` frame, crop the padding to `input_size` (the resized image's `(h, w)`),
    bilinear to `original_size` (skipped when it equals `input_size`: bilinear at scale 1 is the identity)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, masks.shape[1], *original_size), dtype=torch.float32)
    masks = F.interpolate(masks.float(), (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    if tuple(input_size) == tuple(original_size):
        return masks.contiguous()  # no copy unless the padding was cropped
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
