"""IoU matching of anchors to ground-truth faces (§3.2).

Each anchor gets the index of its best ground truth when IoU >= positive threshold, BACKGROUND when
its best IoU < negative threshold, IGNORE in between. With low-quality matches on, every ground
truth also claims the anchors that tie for its highest IoU, even below the positive threshold, so
that tiny faces are never left without a positive anchor.
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

BACKGROUND = -1
IGNORE = -2


class Matcher:
    def __init__(self, positive_iou: float = 0.5, negative_iou: float = 0.3, allow_low_quality_matches: bool = True):
        if negative_iou > positive_iou:
            raise ValueError("negative_iou must not exceed positive_iou")
        self.positive_iou = positive_iou
        self.negative_iou = negative_iou
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Per anchor: matched GT index, BACKGROUND or IGNORE. gt_boxes [G, 4], anchors [N, 4]."""
        n = anchors.shape[0]
        if gt_boxes.numel() == 0:
            return torch.full((n,), BACKGROUND, dtype=torch.long, device=anchors.device)
        iou = box_iou(gt_boxes, anchors)  # [G, N]
        best_iou, matches = iou.max(dim=0)
        result = matches.clone()
        result[best_iou < self.positive_iou] = IGNORE
        result[best_iou < self.negative_iou] = BACKGROUND
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # Ties included; a GT with no overlap at all (IoU 0) claims nothing.
            gt_idx, anchor_idx = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
            result[anchor_idx] = matches[anchor_idx]
        return result
