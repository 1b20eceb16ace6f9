"""Heads: the shared 1x1 detection head and the Mask R-CNN-style keypoint head (§3.2).

Heads only produce raw outputs; labelling, losses and decoding live in the meta-architecture
(maskface.py), losses.py and postprocess.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import KeypointConfig


class DetectionHead(nn.Module):
    """1x1 convs shared across levels: one face logit and four box deltas per anchor."""

    def __init__(self, channels: int, num_anchors: int, prior_probability: float = 0.01):
        super().__init__()
        self.num_anchors = num_anchors
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.box = nn.Conv2d(channels, num_anchors * 4, 1)
        for conv in (self.cls, self.box):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Focal-loss prior: every anchor starts at p = 0.01, so an untrained model keeps no face.
        nn.init.constant_(self.cls.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, total anchors] and deltas [B, total anchors, 4], anchors ordered as in anchors.py."""
        logits, deltas = [], []
        for f in features:
            b, _, h, w = f.shape
            logits.append(self.cls(f).permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(self.box(f).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class KeypointHead(nn.Module):
    """RoI features [N, C, 14, 14] -> heatmap logits [N, K, 56, 56].

    8 x (3x3 conv + GN + ReLU), a 4x4 stride-2 transposed conv to K channels (28x28), then a
    bilinear x2 upsampling (56x56).
    """

    def __init__(self, in_channels: int, cfg: KeypointConfig):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(cfg.num_convs):
            layers += [
                nn.Conv2d(ch, cfg.conv_channels, 3, padding=1, bias=False),
                nn.GroupNorm(cfg.gn_groups, cfg.conv_channels),
                nn.ReLU(inplace=True),
            ]
            ch = cfg.conv_channels
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(ch, cfg.num_landmarks, 4, stride=2, padding=1)
        self.heatmap_size = cfg.heatmap_size
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = self.deconv(self.convs(roi_features))
        return F.interpolate(x, size=(self.heatmap_size, self.heatmap_size), mode="bilinear", align_corners=False)
