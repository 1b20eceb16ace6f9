"""NME / CED / AUC / failure rate / CED@0.95 and detection-based landmark evaluation, by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from maskface.data.landmark_sets import OUTER_EYE_CORNERS_68
from maskface.evaluation import landmarks as lm
from maskface.evaluation.landmarks import (
    LandmarkFile,
    LandmarkImage,
    auc_at,
    box_normaliser,
    ced_at,
    ced_curve,
    evaluate_landmarks,
    failure_rate,
    interocular_normaliser,
    load_landmark_file,
    match_faces,
    nme_per_face,
    save_landmark_file,
)

FIVE = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])


def test_constant_offset_box_normaliser():
    gt = FIVE[None]
    box = np.array([[0.0, 0.0, 100.0, 100.0]])  # sqrt(w h) = 100
    # every point off by (3, 4): distance 5 -> NME 5 / 100
    e = nme_per_face(gt + [3.0, 4.0], gt, box_normaliser(box))
    assert e.tolist() == [0.05]
    # sqrt(w h) of a 50 x 200 box is 100 too
    assert box_normaliser(np.array([[10, 10, 60, 210]])).tolist() == [100.0]


def test_constant_offset_interocular_68():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (2, 68, 2))
    a, b = OUTER_EYE_CORNERS_68
    gt[:, a] = [20.0, 50.0]
    gt[:, b] = [80.0, 50.0]  # outer corners 60 px apart
    d = interocular_normaliser(gt)
    assert d.tolist() == [60.0, 60.0]
    np.testing.assert_allclose(nme_per_face(gt + [3.0, 4.0], gt, d), [5 / 60, 5 / 60])
    # 5 points: distance between the eye centres (points 0 and 1): 40
    assert interocular_normaliser(FIVE[None]).tolist() == [40.0]
    with pytest.raises(ValueError, match="no inter-ocular definition"):
        interocular_normaliser(np.zeros((1, 7, 2)))


def test_missing_landmarks_are_excluded():
    gt = FIVE[None].copy()
    gt[0, 2] = -1.0  # nose missing in the annotation
    pred = gt + [3.0, 4.0]
    pred[0, 2] = [1000.0, 1000.0]  # anything there must not count
    assert nme_per_face(pred, gt, [100.0]).tolist() == [0.05]
    # through a validity mask instead
    valid = np.array([[True, True, True, False, False]])
    pred2 = FIVE[None] + [3.0, 4.0]
    pred2[0, 3:] = 0.0
    assert nme_per_face(pred2, FIVE[None], [100.0], valid).tolist() == [0.05]
    # no valid point, or an unusable normaliser: NaN (unscorable)
    assert np.isnan(nme_per_face(pred, np.full((1, 5, 2), -1.0), [100.0])[0])
    assert np.isnan(nme_per_face(pred, gt, [0.0])[0])
    # an eye missing: no inter-ocular distance
    gt_eye = FIVE[None].copy()
    gt_eye[0, 0] = -1.0
    assert np.isnan(interocular_normaliser(gt_eye)[0])


def test_ced_auc_failure_rate_by_hand():
    errors = np.array([0.01, 0.02, 0.05, np.inf])  # the inf is an unmatched face
    x, y = ced_curve(errors, thresholds=[0.0, 0.01, 0.03, 0.05, 0.1])
    assert y.tolist() == [0.0, 0.25, 0.5, 0.75, 0.75]
    # AUC@0.08 = mean over faces of max(0, 1 - e / 0.08):
    #   [0, 0.04, 0.08, inf] -> (1 + 0.5 + 0 + 0) / 4 = 0.375
    e2 = np.array([0.0, 0.04, 0.08, np.inf])
    assert auc_at(e2, 0.08) == pytest.approx(0.375)
    # the same area by numerical integration of the CED curve
    xs, ys = ced_curve(e2, max_error=0.08, num=200001)
    assert np.trapz(ys, xs) / 0.08 == pytest.approx(0.375, abs=1e-4)
    # failure: NME > threshold (0.08 itself is not a failure; the unmatched face is)
    assert failure_rate(e2, 0.08) == 0.25
    assert failure_rate(e2, 0.079) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        auc_at([np.nan], 0.08)


def test_ced_at_095():
    # 20 faces with errors 0.001 .. 0.020: 95 % (19 faces) fall at or below 0.019
    errors = np.arange(1, 21) / 1000.0
    assert ced_at(np.random.default_rng(1).permutation(errors), 0.95) == 0.019
    assert ced_at(errors[:10], 0.95) == 0.010  # 10 faces: 9.5 -> the 10th
    assert ced_at(np.array([0.01] * 19 + [np.inf]), 0.95) == 0.01
    assert ced_at(np.array([0.01] * 18 + [np.inf] * 2), 0.95) == np.inf


def test_match_most_confident_proposal():
    gt = np.array([[0, 0, 100, 100], [300, 300, 340, 340]])
    pred = np.array([[0, 0, 100, 100], [2, 2, 102, 102], [0, 0, 100, 30], [500, 500, 600, 600]])
    scores = np.array([0.9, 0.95, 0.99, 0.99])
    # face 0: preds 0 (IoU 1) and 1 (IoU 9604/10396) qualify at 0.4; pred 2 (IoU 0.3) does not;
    # the most confident qualifying one is pred 1. Face 1 has none.
    assert match_faces(gt, pred, scores, 0.4).tolist() == [1, -1]
    assert match_faces(gt, pred, scores, 0.3).tolist() == [2, -1]


def _gt_and_pred() -> tuple[LandmarkFile, LandmarkFile]:
    face1 = FIVE
    face2 = FIVE + [200.0, 0.0]
    face2_gt = face2.copy()
    face2_gt[2] = -1.0
    gt = LandmarkFile(5, [
        LandmarkImage("img1", np.array([[0, 0, 100, 100], [200, 0, 300, 100]], float), np.stack([face1, face2_gt])),
        LandmarkImage("img2", np.array([[0, 0, 50, 50]], float), (FIVE / 2)[None]),
    ])
    p2 = face2 + [0.0, 5.0]
    p2[2] = [1000.0, 1000.0]
    pred = LandmarkFile(5, [
        LandmarkImage("img1", np.array([[0, 0, 100, 100], [2, 2, 102, 102], [200, 0, 300, 100]], float),
                      np.stack([face1 + [3.0, 4.0], face1 + [6.0, 8.0], p2]), scores=np.array([0.9, 0.95, 0.5])),
        LandmarkImage("other", np.array([[0, 0, 10, 10]], float), FIVE[None], scores=np.array([0.9])),
    ])
    return gt, pred


def test_evaluate_landmarks_by_hand():
    gt, pred = _gt_and_pred()
    r = evaluate_landmarks(gt, pred, normaliser="box", iou_threshold=0.4, threshold=0.08)
    # face 1: the 0.95 proposal (offset (6, 8): 10 px) -> 10 / 100 = 0.1
    # face 2: offset (0, 5) on its 4 valid points -> 5 / 100 = 0.05 (the missing nose is ignored)
    # face 3 (img2): no prediction for its image -> unmatched -> inf
    assert r.errors.tolist() == [0.1, 0.05, np.inf]
    assert (r.num_faces, r.num_matched, r.num_unscorable) == (3, 2, 0)
    assert r.mean_nme == pytest.approx(0.075) and r.median_nme == pytest.approx(0.075)
    assert r.auc == pytest.approx((0 + (1 - 0.05 / 0.08) + 0) / 3)
    assert r.failure_rate == pytest.approx(2 / 3)
    assert r.ced95 == np.inf
    # inter-ocular (eye centres 40 px apart): face 1 -> 10 / 40; face 2 -> 5 / 40
    r2 = evaluate_landmarks(gt, pred, normaliser="interocular")
    np.testing.assert_allclose(r2.errors, [0.25, 0.125, np.inf])
    d = r.to_dict()
    assert d["ced@0.95"] is None and d["num_matched"] == 2 and d["mean_nme"] == pytest.approx(0.075)
    json.dumps(d, allow_nan=False)


def test_landmark_files_round_trip(tmp_path):
    gt, pred = _gt_and_pred()
    gt.images.append(LandmarkImage("empty", np.zeros((0, 4)), np.zeros((0, 5, 2))))
    for suffix in (".json", ".npz"):
        for data, name in ((gt, "gt"), (pred, "pred")):
            path = save_landmark_file(tmp_path / f"{name}{suffix}", data)
            back = load_landmark_file(path)
            assert back.num_landmarks == 5
            assert [im.image for im in back.images] == [im.image for im in data.images]
            for a, b in zip(back.images, data.images):
                np.testing.assert_array_equal(a.boxes, b.boxes)
                np.testing.assert_array_equal(a.landmarks, b.landmarks)
                if b.scores is not None:
                    np.testing.assert_array_equal(a.scores, b.scores)
        r = evaluate_landmarks(load_landmark_file(tmp_path / f"gt{suffix}"),
                               load_landmark_file(tmp_path / f"pred{suffix}"), normaliser="box")
        assert r.errors.tolist() == [0.1, 0.05, np.inf]
    assert not list(tmp_path.glob("*.tmp*"))


def test_landmark_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="landmark file not found"):
        load_landmark_file(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_landmark_file(bad)
    bad.write_text(json.dumps({"images": [{"image": "a", "faces": [{"box": [0, 0, 1, 1], "landmarks": [[0, 0]] * 5},
                                                                   {"box": [0, 0, 1, 1], "landmarks": [[0, 0]] * 4}]}]}))
    with pytest.raises(ValueError, match="4 landmarks, file declares 5"):
        load_landmark_file(bad)
    with pytest.raises(ValueError, match="unknown landmark file type"):
        (tmp_path / "x.txt").write_text("")
        load_landmark_file(tmp_path / "x.txt")
    gt, pred = _gt_and_pred()
    pred.images[0].scores = None
    with pytest.raises(ValueError, match="no scores"):
        evaluate_landmarks(gt, pred)
    with pytest.raises(ValueError, match="normaliser must be one of"):
        evaluate_landmarks(gt, pred, normaliser="pupil")


def test_summary_helpers():
    s = lm.summarise_errors(np.array([0.02, 0.04, np.inf]), threshold=0.08)
    assert s["mean_nme"] == pytest.approx(0.03)
    assert s["failure_rate"] == pytest.approx(1 / 3)
    assert s["auc"] == pytest.approx((0.75 + 0.5 + 0) / 3)
