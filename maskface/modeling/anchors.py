"""Square anchors on M2..M6: base sizes 16..256, three scales 2^0, 2^(1/3), 2^(2/3) per location.

At 640x640 that is 3 x (160² + 80² + 40² + 20² + 10²) = 102,300 anchors (the paper says "around
112k"; 102,300 is what its own numbers give). Sizes range from 16 to 256 * 2^(2/3) ~ 406 px.
Anchor centres sit at the centres of the feature cells: ((i + 0.5) * stride).
Order: level, then row, then column, then scale — the same order the head's outputs are
flattened in (see heads.py).
"""
from __future__ import annotations

import torch

from ..config import AnchorConfig


def cell_anchors(size: float, scales: tuple[float, ...]) -> torch.Tensor:
    """[A, 4] anchors centred on (0, 0)."""
    half = torch.tensor([size * s / 2.0 for s in scales], dtype=torch.float64)
    return torch.stack([-half, -half, half, half], dim=1)


def grid_anchors(
    feature_size: tuple[int, int], stride: int, size: float, scales: tuple[float, ...],
    device: torch.device | None = None,
) -> torch.Tensor:
    """[H * W * A, 4] anchors of one level, row-major over the grid, scales innermost.

    Written with shape-driven tensor ops only (no Python loops or caches over the size), so that
    an ONNX trace keeps H and W dynamic. All values are exact in float32 (multiples of 0.5).
    """
    h, w = feature_size
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
    cy = ys.reshape(-1, 1).expand(-1, xs.shape[0])
    cx = xs.reshape(1, -1).expand(ys.shape[0], -1)
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    cells = cell_anchors(size, scales).to(dtype=torch.float32, device=device).reshape(1, -1, 4)
    return (centres + cells).reshape(-1, 4)


class AnchorGenerator:
    def __init__(self, cfg: AnchorConfig):
        if len(cfg.strides) != len(cfg.sizes):
            raise ValueError("one anchor size per stride is needed")
        self.cfg = cfg

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.cfg.scales)

    def __call__(self, feature_sizes: list[tuple[int, int]], device: torch.device | None = None) -> list[torch.Tensor]:
        """Per-level anchors for the given feature map sizes (H, W)."""
        return [
            grid_anchors(tuple(s), stride, size, self.cfg.scales, device)
            for s, stride, size in zip(feature_sizes, self.cfg.strides, self.cfg.sizes)
        ]
