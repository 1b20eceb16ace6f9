"""Feature pyramid P2..P6 (§3.2) with GroupNorm in the lateral and output convs.

P6 is a stride-2 max-pool (kernel 1) of P5: the paper writes C5, which has 2048 channels and
would need another conv. Upsampling goes to the lateral's exact size, so any input size works
(odd sizes included), not only multiples of 64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_gn_relu(in_ch: int, out_ch: int, kernel: int, groups: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(groups, out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], channels: int = 256, gn_groups: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList([conv_gn_relu(c, channels, 1, gn_groups, relu=False) for c in in_channels])
        self.output = nn.ModuleList([conv_gn_relu(channels, channels, 3, gn_groups, relu=False) for _ in in_channels])
        self.out_channels = channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """C2..C5 -> P2..P6."""
        laterals = [lat(f) for lat, f in zip(self.lateral, features)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            top = F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest")
            merged.insert(0, lateral + top)
        outs = [conv(m) for conv, m in zip(self.output, merged)]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
