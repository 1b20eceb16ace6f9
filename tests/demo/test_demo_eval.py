"""Demo evaluation rules on hand-made cases (expected values computed by hand)."""
import numpy as np
import pytest

from maskface.demo.evaluate import Matched, at_threshold, best_recall_at_fppi, match_image, sweep


def test_match_image_tp_fp_ignored_and_duplicates():
    gt = np.array([[0, 0, 40, 40], [100, 100, 110, 110], [200, 0, 260, 60]], float)  # 40, 10 (small), 60 px
    boxes = np.array([[1, 1, 41, 41],        # IoU 0.905 with face 0 -> TP
                      [0, 0, 40, 39],        # duplicate of face 0 (lower score) -> FP
                      [100, 100, 110, 111],  # the 10 px face -> ignored
                      [300, 300, 340, 340]],  # nothing -> FP
                     float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    tp, ignored, matched = match_image(gt, boxes, scores, min_face=20)
    assert tp.tolist() == [True, False, False, False]
    assert ignored.tolist() == [False, False, True, False]
    assert matched.tolist() == [0, -1, 1, -1]


def test_sweep_and_operating_points():
    # 2 images, 3 faces >= 20 px. Detections by score: TP .9, FP .8, TP .7, ignored .65, FP .6, TP .4
    m = Matched(scores=np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.4]),
                is_tp=np.array([True, False, True, False, False, True]),
                is_ignored=np.array([False, False, False, True, False, False]), num_faces=3, num_images=2)
    s, recall, precision, fppi = sweep(m)
    assert s.tolist() == [0.9, 0.8, 0.7, 0.6, 0.4]
    assert np.allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
    assert np.allclose(precision, [1.0, 0.5, 2 / 3, 0.5, 0.6])
    assert np.allclose(fppi, [0, 0.5, 0.5, 1.0, 1.0])
    d = at_threshold(m, 0.5)  # TP .9 .7, FP .8 .6 -> recall 2/3, 1 FP / image
    assert d["tp"] == 2 and d["fp"] == 2 and np.isclose(d["recall"], 2 / 3) and d["fp_per_image"] == 1.0
    b = best_recall_at_fppi(m, 0.5)  # the last point with <= 0.5 FP / image is the TP at 0.7
    assert np.isclose(b["recall"], 2 / 3) and b["threshold"] == 0.7
    assert best_recall_at_fppi(m, 0.0)["recall"] == 1 / 3


def test_yaw_proxy_by_hand():
    from maskface.demo.evaluate import yaw_proxy

    # eyes at x 40 and 60 (inter-ocular 20, midpoint 50); nose at 50 (frontal), 57 (0.35) and 40 (-0.5)
    pts = np.array([[[40, 50], [60, 50], [nose, 60], [42, 70], [58, 70]] for nose in (50, 57, 40)], np.float64)
    np.testing.assert_allclose(yaw_proxy(pts), [0.0, 0.35, -0.5])


def test_occlusion_probe_paints_the_lower_half_only():
    from maskface.demo.evaluate import occlude_lower_half

    image = np.zeros((20, 30, 3), np.uint8)
    out = occlude_lower_half(image, np.array([[10, 4, 20, 12]]))
    assert (out[8:12, 10:20] == 128).all()  # rows 8..11 = lower half of y 4..12
    assert out[:8].sum() == 0 and out[12:].sum() == 0 and out[:, :10].sum() == 0 and out[:, 20:].sum() == 0
    assert image.sum() == 0  # the input is left alone


def test_nme_is_reported_by_face_size(tmp_path):
    """Two faces (30 and 100 px) whose predicted landmarks are shifted by 1 px and 5 px; the eyes are
    10 and 40 px apart, so the NMEs are 0.1 and 0.125 by hand, one per size bucket."""
    import cv2
    from types import SimpleNamespace

    from maskface.config import InferenceConfig
    from maskface.data.structures import FaceRecord
    from maskface.demo.evaluate import evaluate_split

    def face(x, y, side, iod):
        cx, cy = x + side / 2, y + side / 2
        return np.array([[cx - iod / 2, cy], [cx + iod / 2, cy], [cx, cy + 2], [cx - 3, cy + 6], [cx + 3, cy + 6]])

    boxes = np.array([[10, 10, 40, 40], [100, 50, 200, 150]], np.float32)
    marks = np.stack([face(10, 10, 30, 10), face(100, 50, 100, 40)]).astype(np.float32)
    path = tmp_path / "img.jpg"
    cv2.imwrite(str(path), np.zeros((200, 240, 3), np.uint8))
    record = FaceRecord(path, boxes, marks, np.ones((2, 5), bool), "test:1")

    class Shifted:
        model = SimpleNamespace(cfg=SimpleNamespace(inference=InferenceConfig()))

        def __call__(self, image):
            shift = np.array([[1.0, 0.0], [0.0, 5.0]], np.float32)[:, None, :]
            return {"boxes": boxes, "scores": np.array([0.9, 0.9], np.float32), "landmarks": marks + shift}

    sizes = evaluate_split(Shifted(), [record], progress=False)["metrics"]["nme_by_size"]
    assert sizes["20-64"]["faces"] == 1 and abs(sizes["20-64"]["mean"] - 0.1) < 1e-6
    assert sizes["64-224"]["faces"] == 1 and abs(sizes["64-224"]["mean"] - 0.125) < 1e-6
    assert sizes["224-inf"] == {"faces": 0, "mean": None, "median": None}


def test_landmark_tta_runs_one_predictor_per_input_size():
    """--landmark-tta 1,2 at --max-side 640: the flip pass reuses the plain predictor, scale 2 gets
    one predictor at 1280, made once; detections are the plain predictor's."""
    from types import SimpleNamespace

    from maskface.demo.evaluate import RefinedLandmarks, parse_scales

    calls, made = [], []

    def fake(side):
        def predict(image):
            calls.append(side)
            return {"boxes": np.array([[10.0, 10, 50, 50]]), "scores": np.array([0.9]),
                    "landmarks": np.full((1, 5, 2), 30.0) + (side == 1280)}
        return predict

    def make(side):
        made.append(side)
        return fake(side)

    plain = fake(640)
    plain.model = SimpleNamespace(cfg=None)
    refined = RefinedLandmarks(plain, make, 640, parse_scales("1,2"))
    image = np.zeros((60, 60, 3), np.uint8)
    for _ in range(2):
        out = refined(image)
    assert made == [1280]
    assert calls == [640, 640, 1280, 1280] * 2  # plain, its mirror, 1280, its mirror
    np.testing.assert_array_equal(out["boxes"], [[10.0, 10, 50, 50]])
    # y is kept by the flip: the mean of the four passes' 30, 30, 31, 31
    np.testing.assert_allclose(out["landmarks"][0, :, 1], (30 + 30 + 31 + 31) / 4)
    for bad in ("1,x", "0", "1,5"):
        with pytest.raises(SystemExit, match="--landmark-tta"):
            parse_scales(bad)
