import torch

from maskface.box_ops import BoxCoder
from maskface.matcher import BACKGROUND, IGNORE, Matcher


def test_matcher_thresholds_on_hand_made_boxes():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 -> positive
        [0.0, 0.0, 10.0, 6.0],  # IoU 0.6 -> positive
        [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 -> ignored
        [0.0, 0.0, 10.0, 2.0],  # IoU 0.2 -> background
        [50.0, 50.0, 60.0, 60.0],  # no overlap -> background
    ])
    result = Matcher(0.5, 0.3, allow_low_quality_matches=False)(gt, anchors)
    assert result.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND]


def test_low_quality_matches_give_a_tiny_face_its_best_anchors():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 104.0, 104.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],
        [100.0, 100.0, 108.0, 108.0],  # IoU 16/64 = 0.25 with face 1: its best, below 0.3
        [104.0, 100.0, 112.0, 108.0],  # IoU 0 with face 1
        [96.0, 96.0, 104.0, 104.0],  # ties with anchor 1 at 0.25
    ])
    without = Matcher(0.5, 0.3, allow_low_quality_matches=False)(gt, anchors)
    assert without.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    with_lq = Matcher(0.5, 0.3, allow_low_quality_matches=True)(gt, anchors)
    assert with_lq.tolist() == [0, 1, BACKGROUND, 1]


def test_no_ground_truth_means_all_background():
    result = Matcher()(torch.zeros((0, 4)), torch.tensor([[0.0, 0, 1, 1], [2.0, 2, 3, 3]]))
    assert result.tolist() == [BACKGROUND, BACKGROUND]


def test_box_coder_round_trip_and_hand_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 45.0]])
    boxes = torch.tensor([[1.0, 2.0, 11.0, 12.0], [0.0, 10.0, 40.0, 30.0]])
    deltas = coder.encode(anchors, boxes)
    # Box 0: shifted by (1, 2) on a 10-px anchor, same size: (10*0.1, 10*0.2, 0, 0).
    torch.testing.assert_close(deltas[0], torch.tensor([1.0, 2.0, 0.0, 0.0]))
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-5, rtol=0)
    batched = coder.decode(deltas.unsqueeze(0).repeat(3, 1, 1), anchors)
    torch.testing.assert_close(batched, boxes.expand(3, -1, -1), atol=1e-5, rtol=0)
