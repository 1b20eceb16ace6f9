"""FPN level assignment, Eq. 6 of the paper: the one Python definition (the C++ one is
assign_level() in plugins/include/maskface_plugins/mlra_math.h; tests/plugins check both agree).

    s = sqrt(max(w * h, 0)),  k = floor(k0 + log2(s / canonical_size + 1e-6)),  k clamped to [min, max]

computed in float32. A box whose area is not a positive number (NaN coordinates included) goes to
min_level and an infinite one to max_level, as in the C++ code.
"""
from __future__ import annotations

import torch


def assign_levels(
    boxes, canonical_level: int = 3, canonical_size: float = 224.0, min_level: int = 2, max_level: int = 6
):
    """Pyramid level (min_level..max_level, int64) of each box [N, 4] (x1, y1, x2, y2).

    Takes a torch tensor (traceable: the portable keypoint graph exports it) or a numpy array
    (returns numpy)."""
    if not isinstance(boxes, torch.Tensor):
        return assign_levels(torch.as_tensor(boxes), canonical_level, canonical_size, min_level, max_level).numpy()
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area = torch.where(area > 0, area, torch.zeros_like(area))  # NaN and negative areas -> 0 (then min_level)
    k = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_size + 1e-6))
    return k.clamp(min=min_level, max=max_level).to(torch.int64)
