"""Inception-like context module (Fig. 3), one per pyramid level with its own weights.

Three branches of sequential 3x3 convs (each conv followed by GroupNorm and ReLU) with growing
receptive fields (3x3, 5x5, 7x7), concatenated back to the input width:

    x ──conv──────────────────────────────▶ branch1 (b1)
    x ──conv─▶ trunk ──conv─────────────────▶ branch2 (b2)
                   └──conv─▶ trunk2 ──conv──▶ branch3 (b3)

The paper's figure is not available; the widths (128, 128 / 64, 128 / 64) are chosen so that
ResNet-50 + FPN + context costs ~90 G multiply-adds at 640x640 as Table 1 states (the context
modules add ~34 G over M2..M6; tests/modeling/test_cost.py counts it).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ContextConfig
from .fpn import conv_gn_relu


class ContextModule(nn.Module):
    def __init__(self, channels: int, cfg: ContextConfig):
        super().__init__()
        if cfg.branch1 + cfg.branch2 + cfg.branch3 != channels:
            raise ValueError(
                f"context branches must concatenate back to {channels} channels, got "
                f"{cfg.branch1} + {cfg.branch2} + {cfg.branch3}"
            )
        g = cfg.gn_groups
        self.branch1 = conv_gn_relu(channels, cfg.branch1, 3, _groups(g, cfg.branch1))
        self.trunk = conv_gn_relu(channels, cfg.trunk, 3, _groups(g, cfg.trunk))
        self.branch2 = conv_gn_relu(cfg.trunk, cfg.branch2, 3, _groups(g, cfg.branch2))
        self.trunk2 = conv_gn_relu(cfg.trunk, cfg.trunk2, 3, _groups(g, cfg.trunk2))
        self.branch3 = conv_gn_relu(cfg.trunk2, cfg.branch3, 3, _groups(g, cfg.branch3))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk(x)
        return torch.cat([self.branch1(x), self.branch2(trunk), self.branch3(self.trunk2(trunk))], dim=1)


def _groups(groups: int, channels: int) -> int:
    # GroupNorm needs channels % groups == 0; narrow branches use fewer groups.
    while channels % groups:
        groups //= 2
    return max(groups, 1)
