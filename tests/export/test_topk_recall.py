"""export/topk_recall.py: greedy NMS visits candidates by score, so with distinct scores the smaller
top-k keeps exactly the larger top-k's detections minus those whose candidate ranks beyond it."""
import copy

import numpy as np
import torch

from export.topk_recall import compare, to_markdown


def test_the_smaller_top_k_loses_exactly_the_detections_ranked_beyond_it(export_model):
    model = copy.deepcopy(export_model)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.detection_head.cls.weight, std=0.5)  # spread the scores: no exact ties
    rng = np.random.default_rng(0)
    images = {"noise": rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)}
    report = compare(model, images, k_old=300, k_new=100, thresholds=(0.0,), max_side=None)
    row = report["rows"][0]
    assert row["tied_above"] < 10  # a few float32 collisions among ~5000 sigmoid scores at most
    assert row["detections_old"] > row["detections_new"] > 0 and row["lost_to_cap"] > 0
    assert row["identical"] == row["detections_new"] == row["detections_old"] - row["lost_to_cap"]
    assert row["only_new"] == 0
    assert "| 0.0 | 1 |" in to_markdown({"model": "seeded", **report})
