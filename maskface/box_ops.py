"""Box encoding: the standard (dx, dy, dw, dh) parameterisation with per-coordinate weights."""
from __future__ import annotations

import math

import torch

# Largest log-scale change a decoded box may take (exp(4.135) ~ 62.5x), as in Detectron.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cx, cy, w, h) of [..., 4] boxes given as (x1, y1, x2, y2)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        self.weights = tuple(float(w) for w in weights)

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that take `anchors` [..., 4] to `boxes` [..., 4] (both x1, y1, x2, y2)."""
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = centre_size(anchors)
        bx, by, bw, bh = centre_size(boxes)
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes from `deltas` [..., 4] relative to `anchors` [..., 4] (broadcast)."""
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = centre_size(anchors)
        dx, dy, dw, dh = deltas.unbind(-1)
        dw = torch.clamp(dw / ww, max=MAX_LOG_SCALE)
        dh = torch.clamp(dh / wh, max=MAX_LOG_SCALE)
        cx = dx / wx * aw + ax
        cy = dy / wy * ah + ay
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_boxes(boxes: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1 = x1.clamp(min=0).clamp(max=width)
    x2 = x2.clamp(min=0).clamp(max=width)
    y1 = y1.clamp(min=0).clamp(max=height)
    y2 = y2.clamp(min=0).clamp(max=height)
    return torch.stack([x1, y1, x2, y2], dim=-1)
