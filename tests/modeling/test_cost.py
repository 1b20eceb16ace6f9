"""Table 1 of the paper at 640x640, in multiply-adds (flop_counter counts 2 FLOPs per MAC).

Models live on the meta device: shapes propagate and the counter sees every op, no arithmetic runs.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from maskface import build_model, get_config


def count_gmacs(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2e9


def test_costs_match_table1():
    plain_cfg = get_config("r50")
    plain_cfg.context.enabled = False
    with torch.device("meta"):
        image = torch.empty(1, 3, 640, 640)
        plain = build_model(config=plain_cfg).eval()
        with_context = build_model("r50").eval()
        roi_features = torch.empty(1, 256, 14, 14)  # one proposal after RoIAlign

        backbone_fpn = count_gmacs(lambda: plain.detection_head(plain.context_features(image)))
        full = count_gmacs(lambda: with_context.detection_head(with_context.context_features(image)))
        keypoint = count_gmacs(lambda: with_context.keypoint_head(roi_features))
    print(f"\nTable 1 at 640x640 (G multiply-adds): ResNet-50+FPN {backbone_fpn:.2f} (paper 58), "
          f"+context {full:.2f} (paper 90), keypoint head {keypoint:.3f} per proposal (paper 1)")
    assert abs(backbone_fpn - 58) / 58 < 0.10
    assert abs(full - 90) / 90 < 0.10
    assert abs(keypoint - 1.0) / 1.0 < 0.10
