"""AFW / PASCAL faces: the face-eval toolbox .mat layout, the detection list, and the Table 2 AP."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import savemat

from maskface.cli import main
from maskface.data.face_eval import format_detections, read_detection_list, read_face_eval_mat
from maskface.data.structures import AnnotationFormatError
from maskface.evaluation.face_eval import evaluate_face_eval


def write_annotations(path, entries):
    """The toolbox layout: struct array Annotations with fields imgname (char) and objects (double)."""
    ann = np.zeros((1, len(entries)), dtype=[("imgname", "O"), ("objects", "O")])
    for i, (name, objects) in enumerate(entries):
        ann[0, i]["imgname"] = name
        ann[0, i]["objects"] = np.asarray(objects, np.float64)
    savemat(str(path), {"Annotations": ann})
    return path


AFW_ENTRIES = [
    # x1 y1 x2 y2 c5 ignore (AFW: 6 columns)
    ("a.jpg", [[0, 0, 100, 100, 0, 0],      # F1
               [200, 0, 300, 100, 0, 1],    # F2: flagged ignore
               [400, 0, 420, 20, 0, 0]]),   # F3: 20 x 20 < 30 x 30: ignored
    ("b.jpg", [[0, 0, 50, 60, 0, 0]]),      # F4 (a single face: MATLAB stores a 1 x 6 row)
    ("c.jpg", np.zeros((0, 6))),            # no face
]
DETECTIONS = """a 0.9 0 0 100 100
a.jpg 0.8 200 0 300 100
a 0.7 400 0 420 20
b 0.6 100 100 150 150

a 0.5 2 0 102 100
b 0.4 0 0 50 60
"""


def test_reads_the_toolbox_mat_layout(tmp_path):
    images = read_face_eval_mat(write_annotations(tmp_path / "afw.mat", AFW_ENTRIES))
    assert [im.name for im in images] == ["a.jpg", "b.jpg", "c.jpg"] and images[0].stem == "a"
    np.testing.assert_array_equal(images[0].boxes, [[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 420, 20]])
    assert images[0].ignore.tolist() == [False, True, True]
    assert images[1].boxes.shape == (1, 4) and images[1].ignore.tolist() == [False]
    assert images[2].boxes.shape == (0, 4)
    # PASCAL faces: 4 columns, no flag; only the size rule applies
    pascal = read_face_eval_mat(write_annotations(tmp_path / "p.mat", [("2008_000001.jpg", [[10, 10, 60, 70],
                                                                                            [0, 0, 29, 80]])]))
    assert pascal[0].ignore.tolist() == [False, True] and pascal[0].stem == "2008_000001"
    assert read_face_eval_mat(tmp_path / "p.mat", min_size=(20, 20))[0].ignore.tolist() == [False, False]


def test_bad_annotation_files_say_what_is_wrong(tmp_path):
    savemat(str(tmp_path / "x.mat"), {"anno": np.zeros(3)})
    with pytest.raises(ValueError, match="no 'Annotations' struct"):
        read_face_eval_mat(tmp_path / "x.mat")
    with pytest.raises(ValueError, match="x2 < x1"):
        read_face_eval_mat(write_annotations(tmp_path / "y.mat", [("a.jpg", [[50, 0, 10, 10, 0, 0]])]))
    with pytest.raises(FileNotFoundError):
        read_face_eval_mat(tmp_path / "none.mat")
    (tmp_path / "d.txt").write_text("a 0.9 0 0 10\n")
    with pytest.raises(AnnotationFormatError, match="d.txt:1"):
        read_detection_list(tmp_path / "d.txt")


def test_table2_ap_hand_computed(tmp_path):
    """Detections on ignored faces (flagged F2, small F3) are dropped. Ranked: 0.9 TP (F1), 0.6 FP,
    0.5 FP (F1 again), 0.4 TP (F4): precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1 over
    2 counted faces. VOC AP = 1/2 * 1 + 1/2 * 1/2 = 0.75."""
    gt = read_face_eval_mat(write_annotations(tmp_path / "afw.mat", AFW_ENTRIES))
    (tmp_path / "det.txt").write_text(DETECTIONS)
    dets = read_detection_list(tmp_path / "det.txt")
    assert sorted(dets) == ["a", "b"] and dets["a"][0].shape == (4, 4)
    for protocol in ("toolbox", "voc"):  # same here: the true positives' boxes are exact, nothing to calibrate
        result = evaluate_face_eval(gt, dets, protocol=protocol)
        assert result.num_faces == 2 and result.num_detections == 4
        assert result.ap == pytest.approx(0.75)
        assert result.true_positive.tolist() == [True, False, False, True]
    # through the command line
    out = tmp_path / "ap.json"
    assert main(["evaluate", "afw", "--pred", str(tmp_path / "det.txt"), "--gt", str(tmp_path / "afw.mat"),
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ap"] == pytest.approx(0.75) and data["ignored_faces"] == 2 and data["dataset"] == "AFW"
    assert data["protocol"] == "toolbox"
    # detections for an image that is not annotated: the wrong list
    (tmp_path / "det2.txt").write_text(DETECTIONS + "zzz 0.3 0 0 10 10\n")
    assert main(["evaluate", "pascal", "--pred", str(tmp_path / "det2.txt"), "--gt", str(tmp_path / "afw.mat")]) == 2


def test_toolbox_protocol_size_filter_inclusive_overlap_and_calibration(tmp_path):
    """Three images, one 100 x 100 face each (0, 0, 100, 100). Detections:
      p 0.95 (0, 0, 15, 15): 15 x 15, not above int(sqrt(0.5 * 30 * 30)) = 21 px: removed by the toolbox
      p 0.9 and q 0.8 (10, 0, 110, 100): inclusive overlap 91*101 / (2*101*101 - 91*101) = 0.820: TP
      r 0.7 (40, 0, 140, 100): 61*101 / (2*101*101 - 61*101) = 0.433: FP before calibration.
    Round 1: the TPs sit 10 px (0.1 of their width) right: every box moves 10 px left, r to
    (30, 0, 130, 100): 71*101 / 13231 = 0.542 > 0.5: a TP from round 2 on (later rounds only shift by
    means that cancel), so AP = 1 with calibration and 2/3 without (one round).
    Plain VOC (continuous IoU 0.429 for r, and the 15 px box kept as a top-scored FP): precision
    0, 1/2, 2/3, 1/2 at recall 0, 1/3, 2/3, 2/3: AP = 1/3 * 2/3 + 1/3 * 2/3 = 4/9."""
    gt = read_face_eval_mat(write_annotations(tmp_path / "g.mat", [(f"{k}.jpg", [[0, 0, 100, 100, 0, 0]])
                                                                  for k in "pqr"]))
    dets = {"p": (np.array([[0, 0, 15, 15], [10, 0, 110, 100]], float), np.array([0.95, 0.9])),
            "q": (np.array([[10, 0, 110, 100]], float), np.array([0.8])),
            "r": (np.array([[40, 0, 140, 100]], float), np.array([0.7]))}
    calibrated = evaluate_face_eval(gt, dets, iterations=5)
    assert calibrated.ap == pytest.approx(1.0) and calibrated.num_detections == 3
    assert calibrated.true_positive.tolist() == [True, True, True]
    assert evaluate_face_eval(gt, dets, iterations=2).ap == pytest.approx(1.0)
    raw = evaluate_face_eval(gt, dets, iterations=1)
    assert raw.ap == pytest.approx(2 / 3) and raw.true_positive.tolist() == [True, True, False]
    assert evaluate_face_eval(gt, dets, protocol="voc").ap == pytest.approx(4 / 9)


def test_toolbox_overlap_is_inclusive_and_strict():
    from maskface.evaluation.face_eval import inclusive_overlap

    # (0, 0, 9, 9) and (5, 0, 14, 9): 10 x 10 pixels each, 5 x 10 shared: 50 / 150
    assert inclusive_overlap([0, 0, 9, 9], [[5, 0, 14, 9]])[0] == pytest.approx(1 / 3)
    # touching edges do not overlap in the toolbox (strict comparisons), though +1 would count a column
    assert inclusive_overlap([0, 0, 9, 9], [[9, 0, 18, 9]])[0] == 0.0


def test_detection_list_round_trip(tmp_path):
    text = format_detections("dir/a.jpg", [[1.5, 2.25, 30, 40]], [0.875])
    assert text == "a 0.875000 1.50 2.25 30.00 40.00\n"
    (tmp_path / "d.txt").write_text(text)
    boxes, scores = read_detection_list(tmp_path / "d.txt")["a"]
    np.testing.assert_array_equal(boxes, [[1.5, 2.25, 30, 40]]) and np.testing.assert_array_equal(scores, [0.875])


def test_predict_faces_writes_the_list_evaluate_reads(tmp_path):
    import cv2
    import torch

    from maskface import build_model
    from maskface.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("mbv2")
    model.cfg.inference.max_detections = 3
    save_checkpoint(tmp_path / "m.pth", model, model.cfg)
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / "img" / name), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mat = write_annotations(tmp_path / "afw.mat", [("a.jpg", [[0, 0, 40, 40, 0, 0]]), ("b.jpg", [[10, 10, 60, 60, 0, 0]])])
    assert main(["predict-faces", "--checkpoint", str(tmp_path / "m.pth"), "--images", str(tmp_path / "img"),
                 "--gt", str(mat), "--out", str(tmp_path / "det.txt"), "--score-threshold", "0", "--quiet"]) == 0
    dets = read_detection_list(tmp_path / "det.txt")
    assert sorted(dets) == ["a", "b"] and all(len(s) == 3 for _, s in dets.values())
    assert all((b[:, 2] <= 96).all() and (b[:, 3] <= 64).all() for b, _ in dets.values())  # original pixels
    assert main(["evaluate", "afw", "--pred", str(tmp_path / "det.txt"), "--gt", str(mat)]) == 0
