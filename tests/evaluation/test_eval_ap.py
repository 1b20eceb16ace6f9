"""IoU, VOC AP and the pooled (AFW / PASCAL faces) AP against hand computations."""
from __future__ import annotations

import numpy as np
import pytest

from maskface.evaluation.ap import box_iou, pooled_detection_ap, voc_ap, xywh_to_xyxy, xyxy_to_xywh


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    # inter 5 x 10 = 50, union 100 + 100 - 50 = 150
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3, 0.0, 1.0]])
    # +1 convention: inter 6 x 11 = 66, areas 121: 66 / 176
    np.testing.assert_allclose(box_iou(a, b[:1], plus_one=True), [[66 / 176]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    # a degenerate (zero-area) box overlaps nothing
    assert box_iou(np.array([[3, 3, 3, 8]]), a)[0, 0] == 0.0


def test_box_format_conversions():
    xyxy = np.array([[1.0, 2.0, 4.0, 8.0]])
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), [[1, 2, 3, 6]])
    np.testing.assert_array_equal(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)


def test_voc_ap_area_and_nan_precision():
    # points (R, P): (0.5, 1), (0.5, 0.5), (1, 0.5): 0.5 * 1 + 0.5 * 0.5 = 0.75
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 0.5]) == pytest.approx(0.75)
    # A NaN precision (0/0 at a threshold with no detection) is skipped, as MATLAB's max skips it.
    assert voc_ap([0.0, 0.5, 1.0], [np.nan, 1.0, 0.5]) == pytest.approx(0.75)
    # The envelope: a later higher precision lifts earlier points. (0.5, 0.2), (1.0, 0.8) -> 0.8
    assert voc_ap([0.5, 1.0], [0.2, 0.8]) == pytest.approx(0.8)
    assert voc_ap([], []) == 0.0


def test_pooled_ap_hand_case():
    gt = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]]), np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    ignore = [np.array([False, True]), np.array([False]), np.array([], bool)]
    pred = [
        np.array([[0, 0, 10, 10], [20, 0, 30, 10], [1, 0, 11, 10]]),  # d1 A, d3 B (ignored), d4 A again
        np.array([[0, 0, 10, 10]]),  # d5 C
        np.array([[0, 0, 5, 5]]),  # d2 on an image without faces
    ]
    scores = [np.array([0.9, 0.7, 0.6]), np.array([0.5]), np.array([0.8])]
    r = pooled_detection_ap(gt, pred, scores, iou_threshold=0.5, gt_ignore=ignore)
    # Ranked: d1 0.9 TP, d2 0.8 FP, (d3 0.7 on an ignored face: dropped), d4 0.6 FP (A taken;
    # IoU 90/110), d5 0.5 TP. 2 faces count.
    # recall 0.5 0.5 0.5 1, precision 1 1/2 1/3 1/2 -> envelope 1 up to R 0.5, 0.5 up to 1.
    # AP = 0.5 * 1 + 0.5 * 0.5 = 0.75
    assert r.num_faces == 2 and r.num_detections == 4
    np.testing.assert_array_equal(r.true_positive, [True, False, False, True])
    np.testing.assert_allclose(r.recall, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision, [1.0, 0.5, 1 / 3, 0.5])
    assert r.ap == pytest.approx(0.75)
    # VOC2007 11-point: recall levels 0..0.5 -> 1 (6 levels), 0.6..1.0 -> 0.5 (5 levels)
    r11 = pooled_detection_ap(gt, pred, scores, gt_ignore=ignore, eleven_point=True)
    assert r11.ap == pytest.approx((6 + 2.5) / 11)
    # Without the ignore flag, d3 recalls B: ranked TP FP TP FP TP over 3 faces.
    # recall 1/3 1/3 2/3 2/3 1, precision 1 1/2 2/3 1/2 3/5 -> envelope 1, 2/3, 3/5:
    # AP = (1 + 2/3 + 3/5) / 3 = 34/45
    assert pooled_detection_ap(gt, pred, scores).ap == pytest.approx(34 / 45)


def test_pooled_ap_threshold_and_errors():
    gt = [np.array([[0, 0, 10, 10]])]
    half = [np.array([[0, 0, 10, 5]])]  # IoU exactly 0.5
    assert pooled_detection_ap(gt, half, [np.array([1.0])], iou_threshold=0.5).ap == pytest.approx(1.0)
    assert pooled_detection_ap(gt, half, [np.array([1.0])], iou_threshold=0.51).ap == 0.0
    with pytest.raises(ValueError, match="one entry per image"):
        pooled_detection_ap(gt, [], [])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        pooled_detection_ap(gt, half, [np.array([1.0, 0.5])])
