import math

import torch
from torchvision.ops import sigmoid_focal_loss

from maskface.losses import heatmap_targets, keypoint_loss_sum, sigmoid_focal_loss_sum, smooth_l1_sum


def test_focal_loss_equals_torchvision_normalised_by_positives():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=g) * 3
    labels = (torch.rand(1000, generator=g) < 0.05).float()
    num_pos = labels.sum()
    ours = sigmoid_focal_loss_sum(logits, labels, 0.25, 2.0) / num_pos
    reference = sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_focal_loss_hand_value():
    # One positive at p = 0.5: 0.25 * 0.5^2 * ln 2.
    value = sigmoid_focal_loss_sum(torch.tensor([0.0]), torch.tensor([1.0]))
    assert math.isclose(value.item(), 0.25 * 0.25 * math.log(2), rel_tol=1e-6)


def test_smooth_l1_hand_value():
    # |d| = 0.05 < beta: 0.5 * d² / beta; |d| = 1 > beta: |d| - beta / 2.
    beta = 1 / 9
    v = smooth_l1_sum(torch.tensor([0.05, 1.0]), torch.zeros(2), beta)
    assert math.isclose(v.item(), 0.5 * 0.05**2 / beta + (1 - beta / 2), rel_tol=1e-6)


def test_keypoint_loss_on_a_hand_computed_case():
    # One ROI (0, 0)-(10, 10) with a 2x2 heatmap; the landmark at (7.5, 2.5) falls in cell
    # (row 0, col 1) -> flat index 1. Logits [0, ln 3, 0, 0]: softmax at index 1 = 3 / 6, so the
    # cross-entropy is ln 2.
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    points = torch.tensor([[[7.5, 2.5], [-1.0, -1.0]]])
    valid = torch.tensor([[True, False]])
    index, valid_out = heatmap_targets(points, valid, rois, heatmap_size=2)
    assert index[0, 0].item() == 1
    assert valid_out.tolist() == [[True, False]]
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 1] = math.log(3)
    logits[0, 1] = torch.tensor([[5.0, -3.0], [2.0, 7.0]])  # the missing point: any values
    loss = keypoint_loss_sum(logits, index, valid_out)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)


def test_missing_landmarks_carry_no_loss_and_no_gradient():
    rois = torch.tensor([[0.0, 0.0, 56.0, 56.0]])
    points = torch.tensor([[[10.0, 10.0], [-1.0, -1.0], [30.0, 40.0]]])
    valid = torch.tensor([[True, False, True]])
    index, valid_out = heatmap_targets(points, valid, rois, 56)
    logits = torch.randn(1, 3, 56, 56, requires_grad=True)
    keypoint_loss_sum(logits, index, valid_out).backward()
    assert logits.grad[0, 1].abs().max().item() == 0.0
    assert logits.grad[0, 0].abs().max().item() > 0.0


def test_landmark_outside_its_roi_is_not_a_target():
    index, valid = heatmap_targets(torch.tensor([[[12.0, 5.0]]]), torch.tensor([[True]]),
                                   torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 56)
    assert valid.tolist() == [[False]]
