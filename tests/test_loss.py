import pytest
import torch

from sam_hf.modeling.loss import IGNORE_INDEX, sam_loss


def _three_masks():
    """One prompt whose target is the left half of an 8x8 grid, and three predictions of it: exact (IoU 1),
    half of it (IoU 0.5), and empty (IoU 0). Logits are +-20 so focal and dice of the exact one are ~0."""
    labels = torch.zeros(1, 1, 8, 8)
    labels[..., :4] = 1
    pred = torch.full((1, 1, 3, 8, 8), -20.0)
    pred[0, 0, 0, :, :4] = 20.0
    pred[0, 0, 1, :4, :4] = 20.0
    return pred, labels


def test_only_the_best_mask_is_backpropagated_through_focal_and_dice():
    pred, labels = _three_masks()
    pred.requires_grad_(True)
    sam_loss(pred, torch.tensor([[[1.0, 0.5, 0.0]]]), labels).backward()
    assert pred.grad[0, 0, 1:].abs().sum() == 0


def test_the_iou_head_is_scored_on_every_mask():
    """With the exact mask best, the MSE still covers the two others: a head that rated all three masks 1.0
    would never learn to pick among them."""
    pred, labels = _three_masks()
    exact = sam_loss(pred, torch.tensor([[[1.0, 0.5, 0.0]]]), labels)
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    scores = torch.ones(1, 1, 3, requires_grad=True)
    loss = sam_loss(pred, scores, labels)
    assert loss.item() == pytest.approx((0.0 + 0.5**2 + 1.0**2) / 3, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[[0.0, 1.0, 2.0]]]) / 3)
    assert sam_loss(pred, scores.detach(), labels, iou_weight=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_padding_prompts_are_left_out_of_the_mean():
    pred, labels = _three_masks()
    pred = torch.cat([pred, torch.full_like(pred, float("nan"))], dim=1)
    labels = torch.cat([labels, torch.full_like(labels, IGNORE_INDEX)], dim=1)
    loss = sam_loss(pred, torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]), labels)
    assert loss.item() == pytest.approx((0.5**2 + 1.0**2) / 3, abs=1e-6)


def test_labels_must_match_the_masks():
    pred, labels = _three_masks()
    with pytest.raises(ValueError, match=r"labels must have shape .* = \(1, 1, 8, 8\), got \(1, 1, 4, 4\)"):
        sam_loss(pred, torch.zeros(1, 1, 3), labels[..., :4, :4])
