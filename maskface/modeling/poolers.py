"""FPN level assignment (Eq. 6) and the multi-level RoIAlign over M2..M6.

The same rule runs inside the TensorRT plugin (plugins/); keep both in step:
  s = sqrt(max(w * h, 0)),  k = floor(k0 + log2(s / canonical_size + 1e-6)),  k in [min, max].
"""
from __future__ import annotations

import torch
from torchvision.ops import roi_align

from ..config import KeypointConfig


def assign_levels(
    boxes: torch.Tensor, canonical_level: int = 3, canonical_size: float = 224.0, min_level: int = 2, max_level: int = 6
) -> torch.Tensor:
    """Pyramid level (min_level..max_level) of each box [N, 4] (x1, y1, x2, y2), computed in float32."""
    boxes = boxes.float()
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size + 1e-6))
    return k.clamp(min=min_level, max=max_level).to(torch.int64)


class MultiLevelRoIAlign(torch.nn.Module):
    def __init__(self, strides: tuple[int, ...], cfg: KeypointConfig):
        super().__init__()
        if len(strides) != cfg.max_level - cfg.min_level + 1:
            raise ValueError(f"{len(strides)} feature maps for levels {cfg.min_level}..{cfg.max_level}")
        self.strides = tuple(strides)
        self.cfg = cfg

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """features M2..M6 [B, C, H_l, W_l]; rois [N, 5] (batch index, x1, y1, x2, y2) in input pixels."""
        cfg = self.cfg
        size = cfg.roi_size
        levels = assign_levels(rois[:, 1:], cfg.canonical_level, cfg.canonical_size, cfg.min_level, cfg.max_level)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(levels == cfg.min_level + i, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            pooled = roi_align(
                feature, rois[idx].to(feature.dtype), (size, size),
                spatial_scale=1.0 / stride, sampling_ratio=cfg.sampling_ratio, aligned=True,
            )
            out[idx] = pooled
        return out
