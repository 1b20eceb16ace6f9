import math

import pytest
import torch
from torchvision.ops import roi_align

from maskface.config import KeypointConfig
from maskface.modeling.poolers import MultiLevelRoIAlign, assign_levels


def square(side: float, x: float = 0.0, y: float = 0.0) -> list[float]:
    return [x, y, x + side, y + side]


@pytest.mark.parametrize(
    "side, level",
    [
        # Eq. 6 with k0 = 3, canonical 224: k = floor(3 + log2(side / 224)), clamped to [2, 6].
        (111.0, 2), (113.0, 2),  # around 112²: floor gives 1 and 2, both land on M2
        (223.0, 2), (225.0, 3),  # around 224²: M2 | M3
        (447.0, 3), (449.0, 4),  # around 448²: M3 | M4
        (895.0, 4), (897.0, 5),  # around 896²: M4 | M5
        (1791.0, 5), (1793.0, 6),  # around 1792²: M5 | M6
        (5000.0, 6), (2.0, 2),
    ],
)
def test_level_assignment_follows_eq6(side, level):
    assert assign_levels(torch.tensor([square(side)])).item() == level
    # Same area as a non-square box gives the same level.
    assert assign_levels(torch.tensor([[0.0, 0.0, side * 2, side / 2]])).item() == level


def test_multilevel_roi_align_equals_per_level_torchvision():
    g = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32, 64)
    features = [torch.randn(2, 8, 256 // s, 320 // s, generator=g) for s in strides]
    cfg = KeypointConfig()
    rois = torch.tensor([
        [0, 10.3, 20.7, 60.1, 90.9],  # ~60 px -> M2
        [1, 0.0, 0.0, 250.0, 240.0],  # ~245 px -> M3
        [0, -20.0, 30.0, 200.0, 255.0],  # partly outside
        [1, 5.5, 5.5, 6.25, 7.0],  # sub-pixel
        [0, 40.0, 10.0, 41.0, 500.0],  # thin
    ])
    out = MultiLevelRoIAlign(strides, cfg)(features, rois)
    for i, roi in enumerate(rois):
        w, h = (roi[3] - roi[1]).item(), (roi[4] - roi[2]).item()
        k = min(6, max(2, math.floor(3 + math.log2(math.sqrt(w * h) / 224 + 1e-6))))
        expected = roi_align(features[k - 2], roi[None], (14, 14), 1.0 / strides[k - 2], 2, aligned=True)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=0)


def test_zero_rois_give_an_empty_output():
    features = [torch.randn(1, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    out = MultiLevelRoIAlign((4, 8, 16, 32, 64), KeypointConfig())(features, torch.zeros(0, 5))
    assert out.shape == (0, 4, 14, 14)
