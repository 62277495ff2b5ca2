"""SAM's training loss: focal + dice on mask logits (20:1) and MSE between predicted and actual IoU.

With several masks per prompt only the lowest-loss mask's focal + dice is backpropagated, as in the SAM
paper; the IoU head is scored on every mask, since choosing among them is what its prediction is for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "dice_loss", "sam_loss", "sigmoid_focal_loss"]

# A prompt whose label mask is filled with IGNORE_INDEX is padding and contributes nothing.
IGNORE_INDEX = -100


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean focal loss over the last two (spatial) dimensions: `(..., h, w)` -> `(...)`."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss over the last two (spatial) dimensions: `(..., h, w)` -> `(...)`."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    intersection = (prob * targets).sum(-1)
    return 1 - (2 * intersection + smooth) / (prob.sum(-1) + targets.sum(-1) + smooth)


def sam_loss(
    pred_masks: torch.Tensor,
    iou_scores: torch.Tensor,
    labels: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
) -> torch.Tensor:
    """Scalar loss of a batch of predictions.

    Args:
        pred_masks: `(batch_size, point_batch_size, num_masks, h, w)` mask logits.
        iou_scores: `(batch_size, point_batch_size, num_masks)` predicted IoU.
        labels: `(batch_size, point_batch_size, h, w)` target masks in {0, 1}; a prompt filled with
            `IGNORE_INDEX` is padding.

    Returns:
        The mean over real prompts of the best mask's `focal_weight * focal + dice_weight * dice` plus
        `iou_weight` times the MSE of the predicted IoU against the actual IoU, averaged over all masks.
    """
    if labels.shape != pred_masks.shape[:2] + pred_masks.shape[3:]:
        raise ValueError(
            "labels must have shape (batch_size, point_batch_size, mask_size, mask_size) = "
            f"{tuple(pred_masks.shape[:2] + pred_masks.shape[3:])}, got {tuple(labels.shape)}"
        )
    valid = labels.flatten(2)[..., 0] != IGNORE_INDEX  # (B, P)
    targets = labels.clamp(min=0).to(pred_masks.dtype)[:, :, None].expand_as(pred_masks)
    per_mask = focal_weight * sigmoid_focal_loss(pred_masks, targets) + dice_weight * dice_loss(
        pred_masks, targets
    )
    best = per_mask.argmin(dim=-1, keepdim=True)  # (B, P, 1)
    mask_loss = per_mask.gather(-1, best).squeeze(-1)

    with torch.no_grad():
        binary = (pred_masks > 0).flatten(-2)
        target_flat = targets.flatten(-2) > 0.5
        inter = (binary & target_flat).sum(-1).float()
        union = (binary | target_flat).sum(-1).float()
        actual_iou = inter / union.clamp(min=1)
    iou_loss = ((iou_scores - actual_iou.to(iou_scores.dtype)) ** 2).mean(-1)  # (B, P)

    total = mask_loss + iou_weight * iou_loss
    # where, not multiply: a padded prompt's non-finite loss must not leak into the mean as NaN
    return torch.where(valid, total, 0.0).sum() / valid.sum().clamp(min=1)
