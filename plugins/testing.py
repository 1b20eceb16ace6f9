"""Test cases and the torchvision reference for the multi-level RoIAlign (used by tests/plugins and
benchmarks/plugin_check.py, so the CPU tests and the GPU check run the same cases)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only; torch is imported where it is used
    import torch

from maskface.modeling.levels import assign_levels

#: Eq. 6 level boundaries in sqrt(area) (pixels) for the default k0 = 3, canonical size 224.
LEVEL_BOUNDARIES = (112.0, 224.0, 448.0, 896.0, 1792.0)


def make_features(
    rng: np.random.Generator,
    batch: int = 2,
    channels: int = 4,
    image_hw: tuple[int, int] = (256, 320),
    min_level: int = 2,
    max_level: int = 6,
    dtype=np.float32,
) -> list[np.ndarray]:
    """Random maps M_min..M_max [B, C, ceil(H / 2^l), ceil(W / 2^l)]."""
    h, w = image_hw
    return [
        rng.standard_normal((batch, channels, math.ceil(h / 2**l), math.ceil(w / 2**l))).astype(dtype)
        for l in range(min_level, max_level + 1)
    ]


def _near_level_boundary(rois: np.ndarray, canonical_size: float = 224.0, margin: float = 2e-3) -> np.ndarray:
    w = (rois[:, 3] - rois[:, 1]).astype(np.float64)
    h = (rois[:, 4] - rois[:, 2]).astype(np.float64)
    s = np.sqrt(np.maximum(w * h, 0.0))
    k = 3.0 + np.log2(s / canonical_size + 1e-6)
    frac = k - np.floor(k)
    return (s > 0) & ((frac < margin) | (frac > 1.0 - margin))


def make_rois(
    rng: np.random.Generator, n: int = 300, image_hw: tuple[int, int] = (256, 320), batch: int = 2
) -> np.ndarray:
    """ROIs [n, 5] mixing sub-pixel, tiny, medium, large, huge, partly / fully outside the image, inverted
    and zero-size boxes, and boxes on integer coordinates; none within 0.2 % of an Eq. 6 level boundary."""
    img_h, img_w = image_hw
    kinds = ("subpixel", "tiny", "medium", "large", "huge", "partly_outside", "outside", "inverted", "zero", "integer")
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        b = float(rng.integers(0, batch))
        if kind == "subpixel":
            w, h = rng.uniform(0.05, 1.0, 2)
        elif kind == "tiny":
            w, h = rng.uniform(1.0, 8.0, 2)
        elif kind == "medium":
            w, h = np.exp(rng.uniform(np.log(8), np.log(200), 2))
        elif kind == "large":
            w, h = np.exp(rng.uniform(np.log(200), np.log(1500), 2))
        elif kind == "huge":
            w, h = np.exp(rng.uniform(np.log(1500), np.log(6000), 2))
        elif kind in ("partly_outside", "outside"):
            w, h = np.exp(rng.uniform(np.log(4), np.log(800), 2))
        elif kind == "inverted":
            w, h = -rng.uniform(0.5, 50.0), rng.uniform(0.5, 50.0)
            if rng.random() < 0.5:
                w, h = h, w
        elif kind == "zero":
            w, h = (0.0, rng.uniform(1, 30)) if rng.random() < 0.5 else (0.0, 0.0)
        else:  # integer coordinates
            w, h = float(rng.integers(1, 300)), float(rng.integers(1, 300))
        if kind == "partly_outside":
            x1 = rng.uniform(-w + 1, img_w - 1) if rng.random() < 0.5 else rng.uniform(-w * 0.9, -1)
            y1 = rng.uniform(-h + 1, img_h - 1)
        elif kind == "outside":
            x1 = img_w + rng.uniform(10, 300) if rng.random() < 0.5 else -w - rng.uniform(70, 300)
            y1 = rng.uniform(-h, img_h)
        elif kind == "huge":
            x1, y1 = rng.uniform(-w / 2, img_w), rng.uniform(-h / 2, img_h)
        elif kind == "integer":
            x1, y1 = float(rng.integers(-20, img_w)), float(rng.integers(-20, img_h))
        else:
            x1, y1 = rng.uniform(-4, img_w + 4), rng.uniform(-4, img_h + 4)
        rows.append([b, x1, y1, x1 + w, y1 + h])
    rois = np.asarray(rows, dtype=np.float32)
    bad = _near_level_boundary(rois)
    while bad.any():  # nudge boxes off the exact level boundaries (the rule is tested separately)
        rois[bad, 3] += np.float32(0.01) * (rois[bad, 3] - rois[bad, 1]) + np.float32(0.37)
        bad = _near_level_boundary(rois)
    return rois


def boundary_rois(boundaries: Sequence[float] = LEVEL_BOUNDARIES, delta: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Square ROIs with sqrt(area) just under and over each boundary, and the Eq. 6 level each must get."""
    rows, levels = [], []
    for s_edge in boundaries:
        k_over = int(math.floor(3 + math.log2(s_edge / 224.0)))  # level from the boundary upwards
        for s, k in ((s_edge - delta, k_over - 1), (s_edge + delta, k_over)):
            rows.append([0.0, 10.0, 20.0, 10.0 + s, 20.0 + s])
            levels.append(min(max(k, 2), 6))
    return np.asarray(rows, dtype=np.float32), np.asarray(levels, dtype=np.int64)


def torchvision_multilevel(
    features: Sequence["torch.Tensor"],
    rois: "torch.Tensor",
    output_size: int = 14,
    sampling_ratio: int = 2,
    canonical_level: int = 3,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 6,
    aligned: bool = True,
) -> "torch.Tensor":
    """Reference: torchvision.ops.roi_align on the Eq. 6 level of each ROI (levels from maskface.modeling.levels).
    Computes in the features' dtype and device; ROIs are cast to that dtype as torchvision requires."""
    import torch
    from torchvision.ops import roi_align

    levels = assign_levels(rois[:, 1:].detach().cpu(), canonical_level, canonical_size, min_level, max_level).to(rois.device)
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for i, f in enumerate(features):
        idx = torch.nonzero(levels == min_level + i, as_tuple=True)[0]
        if idx.numel():
            out[idx] = roi_align(
                f, rois[idx].to(f.dtype), (output_size, output_size), spatial_scale=2.0 ** -(min_level + i),
                sampling_ratio=sampling_ratio, aligned=aligned,
            )
    return out
