import math

import torch

from maskface.config import AnchorConfig
from maskface.modeling.anchors import AnchorGenerator


def test_anchor_count_at_640_matches_the_paper_levels():
    cfg = AnchorConfig()
    sizes = [(640 // s, 640 // s) for s in cfg.strides]
    per_level = [len(a) for a in AnchorGenerator(cfg)(sizes)]
    # 3 anchors per cell on 160², 80², 40², 20², 10² grids.
    assert per_level == [3 * 160 * 160, 3 * 80 * 80, 3 * 40 * 40, 3 * 20 * 20, 3 * 10 * 10]
    assert sum(per_level) == 102_300
    print(f"anchors at 640x640: {per_level} = {sum(per_level)}")


def test_anchor_sizes_span_16_to_406_and_are_square_and_centred():
    cfg = AnchorConfig()
    anchors = AnchorGenerator(cfg)([(2, 3)] * 5)
    all_anchors = torch.cat(anchors)
    w = all_anchors[:, 2] - all_anchors[:, 0]
    h = all_anchors[:, 3] - all_anchors[:, 1]
    torch.testing.assert_close(w, h)
    assert math.isclose(w.min().item(), 16.0, rel_tol=1e-6)
    assert math.isclose(w.max().item(), 256 * 2 ** (2 / 3), rel_tol=1e-6)
    assert 406 < w.max().item() < 407
    # First anchor of level M3 (stride 8): centred on the first cell's centre (4, 4), size 32.
    first = anchors[1][0]
    torch.testing.assert_close(first, torch.tensor([4 - 16.0, 4 - 16.0, 4 + 16.0, 4 + 16.0]))
    # Order is row, column, scale: anchor 3 is the cell (row 0, column 1).
    cx = (anchors[1][3, 0] + anchors[1][3, 2]) / 2
    assert cx.item() == 12.0
