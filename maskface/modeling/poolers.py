"""The multi-level RoIAlign over M2..M6: each RoI pooled from its Eq. 6 level (levels.assign_levels,
the rule the TensorRT plugin in plugins/ runs too)."""
from __future__ import annotations

import torch
from torchvision.ops import roi_align

from ..config import KeypointConfig
from .levels import assign_levels

__all__ = ["MultiLevelRoIAlign", "assign_levels"]


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
