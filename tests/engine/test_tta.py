"""Test-time augmentation: flip mapping (with the landmark permutation), Soft-NMS, box voting.

The detector is a fake: it thresholds a synthetic image that holds one bright face rectangle and
five brighter dots, and names the dots by where they are in the image (the two upper dots are the
eyes, the one on the image's left is point 0 "left eye", ...), as a real detector does.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from maskface.data.landmark_sets import flip_landmarks, flip_permutation
from maskface.engine.tta import (
    TTAConfig,
    augmented_detections,
    box_voting,
    flip_detections_back,
    refine_landmarks,
    scaled,
    soft_nms,
    tta_predict,
)

H, W = 120, 200
FACE = (30, 20, 90, 100)  # x1, y1, x2, y2 (continuous): off-centre, so a wrong flip shows
DOTS = [(40, 45), (70, 42), (58, 62), (45, 82), (75, 85)]  # (col, row): l-eye r-eye nose l-mouth r-mouth


def synthetic_image() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    x1, y1, x2, y2 = FACE
    img[y1:y2, x1:x2] = 120
    for c, r in DOTS:
        img[r - 1:r + 2, c - 1:c + 2] = 250  # 3 x 3 dot centred on pixel (c, r): centre (c + 0.5, r + 0.5)
    return img


def truth():
    return np.array(FACE, float), np.array([[c + 0.5, r + 0.5] for c, r in DOTS])


def fake_detector(image: np.ndarray) -> dict:
    """Face box = bounding box of pixels > 60 (continuous coordinates); landmarks = centroids of
    the pixel centres of each dot (> 200), named by image position. Also one weak spurious box."""
    gray = image[:, :, 0]
    ys, xs = np.nonzero(gray > 60)
    box = [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
    n, labels = cv2.connectedComponents((gray > 200).astype(np.uint8))
    pts = []
    for k in range(1, n):
        yy, xx = np.nonzero(labels == k)
        pts.append([xx.mean() + 0.5, yy.mean() + 0.5])
    pts = np.array(sorted(pts, key=lambda p: p[1]))  # top to bottom
    eyes = pts[:2][np.argsort(pts[:2, 0])]
    mouth = pts[3:5][np.argsort(pts[3:5, 0])]
    landmarks = np.vstack([eyes, pts[2:3], mouth])
    lscores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])  # per named point (to check their permutation)
    spurious = [box[0] + 2, box[1] + 2, box[2] - 2, box[3] - 2]
    return {
        "boxes": np.array([box, spurious], np.float32),
        "scores": np.array([0.95, 0.30], np.float32),
        "landmarks": np.stack([landmarks, landmarks + 1.0]).astype(np.float32),
        "landmark_scores": np.stack([lscores, lscores]).astype(np.float32),
    }


def fake_predict(image: np.ndarray, scale: float) -> dict:
    """Detect on the image resized by `scale` (nearest: blocks of pixels), map back to `image`."""
    if scale == 1.0:
        return fake_detector(image)
    h, w = image.shape[:2]
    resized = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_NEAREST)
    out = fake_detector(resized)
    out["boxes"] = out["boxes"] / scale
    out["landmarks"] = out["landmarks"] / scale
    return out


def test_fake_detector_sees_the_truth():
    box, pts = truth()
    det = fake_detector(synthetic_image())
    np.testing.assert_array_equal(det["boxes"][0], box)
    np.testing.assert_allclose(det["landmarks"][0], pts, atol=1e-5)


def test_flip_branch_maps_boxes_and_landmarks_back():
    image = synthetic_image()
    box, pts = truth()
    cfg = TTAConfig(scales=(1.0,), flip=True, soft_nms_method="hard", soft_nms_iou=0.5)
    plain, flipped = augmented_detections(fake_predict, image, cfg)
    # same box and the same named points, after mapping back with x -> W - x and the permutation
    np.testing.assert_allclose(flipped["boxes"][0], box, atol=1e-5)
    np.testing.assert_allclose(flipped["landmarks"][0], pts, atol=1e-5)
    np.testing.assert_allclose(flipped["boxes"], plain["boxes"], atol=1e-5)
    np.testing.assert_allclose(flipped["landmarks"], plain["landmarks"], atol=1e-5)
    np.testing.assert_allclose(flipped["landmark_scores"][0], [0.8, 0.9, 0.7, 0.5, 0.6], rtol=1e-6)
    # The permutation matters: mapping x -> W - x alone puts point 0 on the right eye.
    raw = fake_detector(np.ascontiguousarray(image[:, ::-1]))
    naive = raw["landmarks"][0].astype(np.float64).copy()
    naive[:, 0] = W - naive[:, 0]
    np.testing.assert_allclose(naive[0], pts[1], atol=1e-5)
    assert flip_permutation(5) == (1, 0, 2, 4, 3)
    # and the helper is its own inverse
    det = {k: np.asarray(v, np.float64) for k, v in raw.items()}
    twice = flip_detections_back(flip_detections_back(det, W), W)
    for key in ("boxes", "landmarks", "landmark_scores"):
        np.testing.assert_allclose(twice[key], det[key])


def test_tta_predict_on_the_pyramid():
    image = synthetic_image()
    box, pts = truth()
    out = tta_predict(fake_predict, image, TTAConfig(scales=(1.0, 2.0), flip=True))
    assert out["boxes"].dtype == np.float32 and out["landmarks"].shape[1:] == (5, 2)
    # the true box and the spurious inner box (IoU 56*76/(60*80) = 0.89) all vote into one face
    assert len(out["scores"]) == 1
    assert out["scores"][0] == pytest.approx(0.95)
    np.testing.assert_allclose(out["boxes"][0], box, atol=1.0)
    np.testing.assert_allclose(out["landmarks"][0], pts, atol=1.0)
    # plain passes score the points [.9 .8 .7 .6 .5], flipped ones (mapped back) [.8 .9 .7 .5 .6]: equal weights
    np.testing.assert_allclose(out["landmark_scores"][0], [0.85, 0.85, 0.7, 0.55, 0.55], atol=1e-6)
    # keep the spurious boxes apart (voting IoU above their overlap): two faces, best first
    out2 = tta_predict(fake_predict, image, scales=(1.0,), vote_iou=0.95)
    assert len(out2["scores"]) == 2 and out2["scores"][0] > out2["scores"][1]
    np.testing.assert_allclose(out2["boxes"][0], box, atol=1e-4)


def test_soft_nms_hand_case():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)  # IoU(A, B) = 1/3
    scores = np.array([0.9, 0.8, 0.7])
    # linear, Nt 0.3: B decays by 1 - 1/3 -> 0.5333; C untouched -> order A, C, B
    keep, s = soft_nms(boxes, scores, "linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(s, [0.9, 0.7, 0.8 * 2 / 3])
    # linear, Nt 0.5: IoU 1/3 is below Nt -> nothing decays
    keep, s = soft_nms(boxes, scores, "linear", iou_threshold=0.5)
    assert keep.tolist() == [0, 1, 2] and s.tolist() == [0.9, 0.8, 0.7]
    # gaussian, sigma 0.5: B *= exp(-(1/3)^2 / 0.5) = exp(-2/9)
    keep, s = soft_nms(boxes, scores, "gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(s, [0.9, 0.7, 0.8 * np.exp(-2 / 9)])
    # classic NMS: B removed
    keep, s = soft_nms(boxes, scores, "hard", iou_threshold=0.3)
    assert keep.tolist() == [0, 2]
    # a decayed score below min_score is dropped: B -> 0.5333 < 0.6
    keep, _ = soft_nms(boxes, scores, "linear", iou_threshold=0.3, min_score=0.6)
    assert keep.tolist() == [0, 2]
    assert soft_nms(np.zeros((0, 4)), np.zeros(0))[0].size == 0
    with pytest.raises(ValueError, match="method must be one of"):
        soft_nms(boxes, scores, "cubic")


def _det(boxes, scores, k=2):
    boxes = np.asarray(boxes, float)
    n = len(boxes)
    lms = np.array([[[b[0], b[1]], [b[2], b[3]]] for b in boxes]).reshape(n, 2, 2)[:, :k]
    return {"boxes": boxes, "scores": np.asarray(scores, float), "landmarks": lms,
            "landmark_scores": np.tile(np.asarray(scores, float)[:, None], (1, k)) if n else np.zeros((0, k))}


def test_box_voting_identical_boxes_returns_that_box():
    b = [12.3, 45.6, 78.9, 101.1]
    out = box_voting(_det([b, b, b], [0.9, 0.8, 0.7]))
    assert out["boxes"].tolist() == [b]  # exactly, not approximately
    assert out["scores"].tolist() == [0.9]
    assert out["landmarks"].tolist() == [[[12.3, 45.6], [78.9, 101.1]]]


def test_box_voting_weighted_average_hand_case():
    # IoU([0,0,10,10], [2,0,12,10]) = 80 / 120 >= 0.3: merged with weights 0.75 / 0.25
    # x1 = 0.75 * 0 + 0.25 * 2 = 0.5, x2 = 0.75 * 10 + 0.25 * 12 = 10.5; score = max = 0.75.
    # The far box stays alone.
    out = box_voting(_det([[2, 0, 12, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.25, 0.75, 0.5]), iou_threshold=0.3)
    np.testing.assert_allclose(out["boxes"], [[0.5, 0, 10.5, 10], [50, 50, 60, 60]])
    np.testing.assert_allclose(out["scores"], [0.75, 0.5])
    np.testing.assert_allclose(out["landmarks"][0], [[0.5, 0], [10.5, 10]])
    np.testing.assert_allclose(out["landmark_scores"][0], [0.75 * 0.75 + 0.25 * 0.25] * 2)
    empty = box_voting(_det(np.zeros((0, 4)), []))
    assert empty["boxes"].shape == (0, 4) and empty["landmarks"].shape == (0, 2, 2)


def test_scaled_adapter_maps_coordinates_back():
    image = synthetic_image()
    box, pts = truth()
    predict = scaled(fake_detector, interpolation=cv2.INTER_NEAREST)
    out = predict(image, 2.0)
    np.testing.assert_allclose(out["boxes"][0], box, atol=1e-5)
    np.testing.assert_allclose(out["landmarks"][0], pts, atol=1e-5)
    out1 = predict(image, 1.0)
    np.testing.assert_array_equal(out1["boxes"][0], box)


# ---- §4.2: Soft-NMS on each augmented image's raw predictions ----------------------------------

def two_pass_raw_predict(image: np.ndarray, scale: float) -> dict:
    """Raw predictions (before any NMS) of two augmentations of a 100 px wide image whose first
    column is marked: the plain pass sees A = (10, 10, 50, 50) @ 0.9 and B = (14, 10, 54, 50) @ 0.8
    (IoU(A, B) = 1440 / 1760 = 9/11, which hard NMS at 0.4 would drop); the flipped pass sees
    (52, 10, 92, 50) @ 0.7, i.e. C = (8, 10, 48, 50) once mapped back."""
    assert scale == 1.0 and image.shape[1] == 100
    if image[0, 0, 0] == 255:  # plain
        return {"boxes": np.array([[10, 10, 50, 50], [14, 10, 54, 50]], float), "scores": np.array([0.9, 0.8])}
    return {"boxes": np.array([[52, 10, 92, 50]], float), "scores": np.array([0.7])}


def test_two_augmentations_soft_nms_then_voting_hand_computed():
    image = np.zeros((60, 100, 3), np.uint8)
    image[:, 0] = 255
    cfg = TTAConfig(scales=(1.0,), flip=True, soft_nms_method="linear", soft_nms_iou=0.3, vote_iou=0.3)
    out = tta_predict(two_pass_raw_predict, image, cfg)
    # Soft-NMS, plain pass: A keeps 0.9; B decays to 0.8 * (1 - 9/11) = 1.6/11. Flipped pass: C 0.7.
    # Voting: IoU(A, B) = 9/11, IoU(A, C) = 1520/1680 >= 0.3: one group, weights 0.9, 1.6/11, 0.7
    # (sum 19.2/11); x1 = (0.9*10 + 1.6/11*14 + 0.7*8) / (19.2/11) = 183/19.2,
    # x2 = (0.9*50 + 1.6/11*54 + 0.7*48) / (19.2/11) = 951/19.2; score = max = 0.9.
    assert len(out["scores"]) == 1 and out["scores"][0] == pytest.approx(0.9)
    np.testing.assert_allclose(out["boxes"][0], [183 / 19.2, 10, 951 / 19.2, 50], rtol=1e-6)
    # Hard NMS first (the option) removes B before Soft-NMS: A and C only, x1 = (9 + 5.6) / 1.6.
    hard_first = dict(two_pass_raw_predict(image, 1.0))
    keep = soft_nms(hard_first["boxes"], hard_first["scores"], "hard", 0.4)[0]
    assert keep.tolist() == [0]

    def hard_predict(img, scale):
        det = two_pass_raw_predict(img, scale)
        k = soft_nms(det["boxes"], det["scores"], "hard", 0.4)[0]
        return {"boxes": det["boxes"][k], "scores": det["scores"][k]}

    out_hard = tta_predict(hard_predict, image, cfg)
    np.testing.assert_allclose(out_hard["boxes"][0], [14.6 / 1.6, 10, 78.6 / 1.6, 50], rtol=1e-6)


def test_model_passes_give_raw_detections_unless_hard_nms_first():
    import torch

    from maskface import build_model
    from maskface.engine.predictor import Predictor
    from maskface.engine.tta import model_passes
    from maskface.evaluation.ap import box_iou

    torch.manual_seed(0)
    model = build_model("mbv2").eval()
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 40
    predictor = Predictor(model, max_side=None)
    # 128 x 128: no padding, so no clipping to the original image changes the boxes' overlaps
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    raw = model_passes(predictor, raw_max_detections=40)(image, 1.0)
    hard = model_passes(predictor, hard_nms_first=True)(image, 1.0)
    no_lm = model_passes(predictor, with_landmarks=False, raw_max_detections=40)(image, 1.0)

    def max_pair_iou(boxes):
        iou = box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0.0)
        return iou.max()

    print(f"\nraw pass {len(raw['boxes'])} boxes (max pairwise IoU {max_pair_iou(raw['boxes']):.2f}), "
          f"hard-NMS pass {len(hard['boxes'])} (max IoU {max_pair_iou(hard['boxes']):.2f})")
    assert len(raw["boxes"]) == 40 and max_pair_iou(raw["boxes"]) > 0.6  # overlapping raw boxes reach Soft-NMS
    assert max_pair_iou(hard["boxes"]) <= 0.4 + 1e-6
    assert (model.cfg.inference.nms_threshold, model.cfg.inference.max_detections) == (0.4, 40)  # restored
    np.testing.assert_array_equal(no_lm["boxes"], raw["boxes"])
    assert raw["landmarks"].shape == (40, 5, 2) and no_lm["landmarks"].shape == (40, 0, 2)


# --- refine_landmarks: landmark-only TTA -------------------------------------------------------

RW = 100  # image width of the refine tests
BASE = np.array([[30.0, 40], [60, 41], [45, 55], [33, 70], [58, 71]])


def offset_predict(offsets: dict, boxes: dict | None = None):
    """predict(image, scale) whose landmarks are BASE + offsets[(scale, flipped)] once mapped back to
    the original image. A flipped image is recognised by the marker pixel the tests put at column 0."""
    def predict(image, scale):
        flipped = image[0, -1, 0] == 255  # the marker moved to the last column
        box = np.array((boxes or {}).get((scale, flipped), [20.0, 30, 70, 80]))
        points = BASE + offsets[(scale, flipped)]
        if flipped:  # what a detector on the mirror image returns: mirrored, named by position
            box = np.array([RW - box[2], box[1], RW - box[0], box[3]])
            points = flip_landmarks(points, RW)
        return {"boxes": box[None], "scores": np.array([0.7]), "landmarks": points[None]}
    return predict


def marked_image():
    image = np.zeros((90, RW, 3), np.uint8)
    image[0, 0] = 255
    return image


def plain_detections():
    return {"boxes": np.array([[20.0, 30, 70, 80]], np.float32), "scores": np.array([0.9], np.float32),
            "landmarks": BASE[None].astype(np.float32), "landmark_scores": np.full((1, 5), 0.8, np.float32)}


def test_refine_landmarks_averages_every_pass_by_hand():
    offsets = {(1.0, True): 1.0, (2.0, False): 2.0, (2.0, True): 3.0}
    out = refine_landmarks(offset_predict(offsets), marked_image(), plain_detections(), scales=(1.0, 2.0))
    # (0 + 1 + 2 + 3) / 4: the plain pass, its mirror, scale 2 and its mirror
    np.testing.assert_allclose(out["landmarks"][0], BASE + 1.5, atol=1e-5)
    plain = plain_detections()
    for key in ("boxes", "scores", "landmark_scores"):  # detections are the plain pass's
        np.testing.assert_array_equal(out[key], plain[key])
    flip_only = refine_landmarks(offset_predict(offsets), marked_image(), plain_detections(), scales=(1.0,))
    np.testing.assert_allclose(flip_only["landmarks"][0], BASE + 0.5, atol=1e-5)


def test_refine_landmarks_ignores_a_pass_that_missed_the_face():
    offsets = {(1.0, True): 1.0, (2.0, False): 2.0, (2.0, True): 3.0}
    elsewhere = {(2.0, False): [60.0, 0, 95, 30]}  # IoU 0 with the face
    out = refine_landmarks(offset_predict(offsets, elsewhere), marked_image(), plain_detections(), scales=(1.0, 2.0))
    np.testing.assert_allclose(out["landmarks"][0], BASE + (0 + 1 + 3) / 3, atol=1e-5)
    # shifted by 10 px: IoU = 40 x 50 / (2 x 2500 - 2000) = 0.667, counted at match_iou 0.6, not at 0.7
    shifted = {(2.0, False): [30.0, 30, 80, 80]}
    counted = refine_landmarks(offset_predict(offsets, shifted), marked_image(), plain_detections(), scales=(1.0, 2.0))
    np.testing.assert_allclose(counted["landmarks"][0], BASE + 1.5, atol=1e-5)
    strict = refine_landmarks(offset_predict(offsets, shifted), marked_image(), plain_detections(), scales=(1.0, 2.0),
                              match_iou=0.7)
    np.testing.assert_allclose(strict["landmarks"][0], BASE + (0 + 1 + 3) / 3, atol=1e-5)


def test_refine_landmarks_on_the_synthetic_face_keeps_the_truth():
    """The thresholding fake detector is exact at every scale and flip: the mean is the truth."""
    image = synthetic_image()
    _, pts = truth()
    plain = fake_detector(image)
    out = refine_landmarks(fake_predict, image, plain, scales=(1.0, 2.0))
    np.testing.assert_allclose(out["landmarks"][0], pts, atol=1e-5)


def test_refine_landmarks_refuses_bad_settings_and_passes_empty_input_through():
    predict = offset_predict({})
    with pytest.raises(ValueError, match="at least one scale"):
        refine_landmarks(predict, marked_image(), plain_detections(), scales=())
    with pytest.raises(ValueError, match="match_iou"):
        refine_landmarks(predict, marked_image(), plain_detections(), match_iou=0)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "landmarks": np.zeros((0, 5, 2))}
    assert refine_landmarks(predict, marked_image(), empty)["boxes"].shape == (0, 4)  # predict never called
