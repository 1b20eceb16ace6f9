"""The three losses of §3.1. Each returns a sum; the caller divides by its normaliser."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss_sum(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sum over elements of the focal loss -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def smooth_l1_sum(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def heatmap_targets(
    landmarks: torch.Tensor, valid: torch.Tensor, rois: torch.Tensor, heatmap_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot target cell per landmark: flat index into the size x size grid over each ROI.

    landmarks [N, K, 2] and rois [N, 4] in image pixels, valid [N, K]. Points outside their ROI
    cannot be represented by the heatmap and become invalid. Returns (indices [N, K], valid).
    """
    x1, y1, x2, y2 = (rois[:, i : i + 1] for i in range(4))
    gx = (landmarks[..., 0] - x1) / (x2 - x1).clamp(min=1e-6) * heatmap_size
    gy = (landmarks[..., 1] - y1) / (y2 - y1).clamp(min=1e-6) * heatmap_size
    inside = (gx >= 0) & (gx < heatmap_size) & (gy >= 0) & (gy < heatmap_size)
    ix = gx.floor().clamp(0, heatmap_size - 1).long()
    iy = gy.floor().clamp(0, heatmap_size - 1).long()
    return iy * heatmap_size + ix, valid & inside


def keypoint_loss_sum(heatmap_logits: torch.Tensor, target_index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Spatial cross-entropy: softmax over each landmark's heatmap, summed over valid landmarks.

    heatmap_logits [N, K, S, S], target_index [N, K] flat indices, valid [N, K].
    """
    n, k = target_index.shape
    if n == 0:
        return heatmap_logits.sum() * 0.0
    logits = heatmap_logits.reshape(n * k, -1)
    ce = F.cross_entropy(logits, target_index.reshape(-1), reduction="none")
    return (ce * valid.reshape(-1).to(ce.dtype)).sum()
