"""Inference decoding, shared by the PyTorch model, the ONNX graphs and the Triton NMS model.

Three steps, each one stage of the deployment pipeline (docs/CONTRACTS.md):
1. `top_candidates`: sigmoid scores, top-k over all anchors, decode + clip boxes (inside detector.onnx).
2. `select_detections`: score threshold, NMS, max detections (the Python NMS step).
3. `decode_heatmaps`: heatmap logits -> sub-pixel landmarks (inside keypoint_head.onnx).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms

from .box_ops import BoxCoder, clip_boxes

# Score of the padding candidates of `top_candidates` (below any sigmoid output).
PAD_SCORE = -1.0


def top_candidates(
    cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder,
    topk: int, image_size: tuple[int, int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [B, topk] (descending) and boxes [B, topk, 4] of the best anchors of each image.

    k is always `topk`, whatever the image size: the candidates are padded with `topk` entries of
    score PAD_SCORE and zero-size boxes, which never pass a score threshold. A fixed k keeps the
    ONNX/TensorRT output shape static and avoids a shape-dependent min(). Boxes are clipped to the
    input image (height, width).
    """
    b = cls_logits.shape[0]
    scores = torch.cat([torch.sigmoid(cls_logits), cls_logits.new_full((b, topk), PAD_SCORE)], dim=1)
    top_scores, top_idx = scores.topk(topk, dim=1)
    deltas = torch.cat([box_deltas, box_deltas.new_zeros((b, topk, 4))], dim=1)
    deltas = torch.gather(deltas, 1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
    padded_anchors = torch.cat([anchors, anchors.new_zeros((topk, 4))], dim=0)
    boxes = coder.decode(deltas, padded_anchors[top_idx])
    return top_scores, clip_boxes(boxes, image_size[0], image_size[1])


def select_detections(
    scores: torch.Tensor, boxes: torch.Tensor, score_threshold: float, nms_threshold: float | None,
    max_detections: int,
) -> torch.Tensor:
    """Indices (into one image's candidates) kept after threshold + NMS, best first, at most max_detections.

    Ties in score are broken by candidate index (torch.sort is stable), so results are deterministic.
    `nms_threshold=None` skips NMS: the raw detections that §4.2's test-time augmentation feeds to
    Soft-NMS.
    """
    keep = torch.nonzero(scores >= score_threshold, as_tuple=True)[0]
    if keep.numel() == 0:
        return keep
    # Drop degenerate boxes (zero area after clipping) before NMS.
    b = boxes[keep]
    keep = keep[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    keep = keep[order]
    if nms_threshold is None:
        return keep[:max_detections]
    kept = nms(boxes[keep].float(), scores[keep].float(), nms_threshold)
    return keep[kept[:max_detections]]


def decode_heatmaps(heatmap_logits: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel landmarks [N, K, 2] in image pixels and their scores [N, K].

    The peak is the argmax cell; each axis is then refined by fitting a parabola through the
    logits of the peak and its two neighbours. Logits are log-probabilities up to a constant, so
    this is the exact peak of a Gaussian-shaped heatmap. The score is the softmax probability of
    the peak cell. rois [N, 4] = (x1, y1, x2, y2) of the heatmap's box.
    """
    n, k, h, w = heatmap_logits.shape
    flat = heatmap_logits.reshape(n, k, h * w)
    peak = flat.argmax(dim=2)
    iy = torch.div(peak, w, rounding_mode="floor")
    ix = peak - iy * w
    scores = torch.softmax(flat, dim=2).gather(2, peak.unsqueeze(-1))[..., 0]

    # Max / Min instead of clamp: an INT64 Clip is outside the TensorRT ONNX parser's support matrix
    # (onnx-tensorrt operators.md: Clip on FP32 / FP16 / BF16); Max and Min take INT64.
    zero = iy.new_zeros(())

    def logit_at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        row = torch.minimum(torch.maximum(y, zero), zero + (h - 1))
        idx = row * w + torch.minimum(torch.maximum(x, zero), zero + (w - 1))
        return flat.gather(2, idx.unsqueeze(-1))[..., 0]

    centre = logit_at(iy, ix)
    dx = _parabola_offset(logit_at(iy, ix - 1), centre, logit_at(iy, ix + 1), (ix > 0) & (ix < w - 1))
    dy = _parabola_offset(logit_at(iy - 1, ix), centre, logit_at(iy + 1, ix), (iy > 0) & (iy < h - 1))

    x1, y1, x2, y2 = (rois[:, i : i + 1] for i in range(4))
    x = x1 + (ix.to(rois.dtype) + 0.5 + dx) * (x2 - x1) / w
    y = y1 + (iy.to(rois.dtype) + 0.5 + dy) * (y2 - y1) / h
    return torch.stack([x, y], dim=-1), scores


def _parabola_offset(left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor, interior: torch.Tensor) -> torch.Tensor:
    curvature = left - 2 * centre + right
    ok = interior & (curvature < 0)
    offset = 0.5 * (left - right) / torch.where(ok, curvature, torch.ones_like(curvature))
    return torch.where(ok, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


def to_numpy_detections(boxes, scores, landmarks, landmark_scores) -> dict[str, np.ndarray]:
    return {
        "boxes": boxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 4),
        "scores": scores.detach().cpu().numpy().astype(np.float32).reshape(-1),
        "landmarks": landmarks.detach().cpu().numpy().astype(np.float32),
        "landmark_scores": landmark_scores.detach().cpu().numpy().astype(np.float32),
    }
