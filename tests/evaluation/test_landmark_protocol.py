"""The §4.2 landmark protocol: IoU / normaliser per data set, most confident detection per face,
the AFLW-5 point reduction, and `maskface predict-landmarks` writing what `evaluate landmarks` reads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskface.cli import main
from maskface.data.structures import FaceRecord
from maskface.evaluation.landmark_protocol import AFLW19_TO_5, PROTOCOLS, ground_truth_file, protocol_predictor
from maskface.evaluation.landmarks import LandmarkFile, LandmarkImage, save_landmark_file

FIVE = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])


def test_protocol_settings_are_the_papers():
    assert {n: (p.iou_threshold, p.normaliser, p.num_landmarks) for n, p in PROTOCOLS.items()} == {
        "aflw5": (0.3, "box", 5), "aflw19": (0.4, "box", 19), "300w": (0.4, "interocular", 68)}
    # AFLW-19 -> 5: eye centres, nose tip, mouth corners (maskface.data.landmark_sets order)
    assert AFLW19_TO_5 == (7, 10, 13, 15, 17)


def aflw_case(tmp_path: Path) -> tuple[Path, Path]:
    """Face 0: box (0, 0, 100, 100) (normaliser sqrt(100*100) = 100). Its 19-point annotation holds
    the 5 true points at indices 7, 10, 13, 15, 17 and decoys (1000, 1000) elsewhere.
    Detections of image a:
      P1 (50, 0, 150, 100): IoU 5000/15000 = 0.333, score 0.9, points off by (6, 8): error 10 -> NME 0.10
      P2 (10, 0, 110, 100): IoU 9000/11000 = 0.818, score 0.6, points off by (3, 4): error 5  -> NME 0.05
      P3 (80, 0, 180, 100): IoU 2000/18000 = 0.111, score 0.99, exact points (never eligible)
    Face 1 (image b, box (0, 0, 50, 50)) has no detection: a failure (error inf)."""
    lm19 = np.full((19, 2), 1000.0, np.float32)
    lm19[list(AFLW19_TO_5)] = FIVE
    records = [
        FaceRecord(tmp_path / "images" / "a.jpg", np.array([[0, 0, 100, 100]], np.float32), lm19[None],
                   np.ones((1, 19), bool), "a:1"),
        FaceRecord(tmp_path / "images" / "b.jpg", np.array([[0, 0, 50, 50]], np.float32), lm19[None] / 2,
                   np.ones((1, 19), bool), "b:1"),
    ]
    gt = ground_truth_file(records, tmp_path, PROTOCOLS["aflw5"])
    assert [im.image for im in gt.images] == ["images/a.jpg", "images/b.jpg"]
    np.testing.assert_array_equal(gt.images[0].landmarks[0], FIVE)  # decoys gone
    boxes = np.array([[50, 0, 150, 100], [10, 0, 110, 100], [80, 0, 180, 100]], float)
    lms = np.stack([FIVE + [6, 8], FIVE + [3, 4], FIVE])
    pred = LandmarkFile(5, [LandmarkImage("images/a.jpg", boxes, lms, np.array([0.9, 0.6, 0.99]))])
    return save_landmark_file(tmp_path / "gt.json", gt), save_landmark_file(tmp_path / "pred.json", pred)


@pytest.mark.parametrize("extra, nme", [(["--protocol", "aflw5"], 0.10),  # IoU 0.3: P1, the most confident
                                        (["--protocol", "aflw5", "--iou", "0.4"], 0.05)])  # IoU 0.4: P2
def test_most_confident_detection_at_the_protocols_iou_gives_the_hand_nme(tmp_path, extra, nme):
    gt, pred = aflw_case(tmp_path)
    out = tmp_path / "m.json"
    assert main(["evaluate", "landmarks", "--gt", str(gt), "--pred", str(pred), "--json", str(out),
                 "--per-face", "--threshold", "0.08", *extra]) == 0
    m = json.loads(out.read_text())
    assert m["normaliser"] == "box" and m["num_faces"] == 2 and m["num_matched"] == 1
    assert m["errors"] == [pytest.approx(nme), None]  # None: face b unmatched (inf)
    assert m["mean_nme"] == pytest.approx(nme)
    assert m["failure_rate@0.08"] == pytest.approx(0.5 if nme < 0.08 else 1.0)
    assert m["auc@0.08"] == pytest.approx(max(0.0, 1 - nme / 0.08) / 2)
    assert m["ced@0.95"] is None  # the unmatched face: 95 % of faces never fall below any error


def test_300w_uses_the_outer_eye_corners(tmp_path):
    """68 points; corners 36 = (20, 50) and 45 = (80, 50): inter-ocular 60. Every point off by
    (3, 4): error 5 -> NME 5/60. The 300W box (HRNet: square around the face) only matches."""
    rng = np.random.default_rng(0)
    lm = rng.uniform(10, 90, (68, 2))
    lm[36], lm[45] = (20, 50), (80, 50)
    box = np.array([[0.0, 0.0, 100.0, 100.0]])
    save_landmark_file(tmp_path / "gt.json", LandmarkFile(68, [LandmarkImage("x", box, lm[None])]))
    save_landmark_file(tmp_path / "p.json", LandmarkFile(68, [LandmarkImage("x", box + 20, (lm + [3, 4])[None],
                                                                             np.array([0.9]))]))
    # IoU of the detection: 80*80 / (2*10000 - 6400) = 0.47 >= 0.4
    assert main(["evaluate", "landmarks", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "p.json"),
                 "--protocol", "300w", "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["normaliser"] == "interocular" and m["iou_threshold"] == 0.4
    assert m["mean_nme"] == pytest.approx(5 / 60)


def test_evaluate_landmarks_needs_a_protocol_or_a_normaliser(tmp_path, capsys):
    gt, pred = aflw_case(tmp_path)
    assert main(["evaluate", "landmarks", "--gt", str(gt), "--pred", str(pred)]) == 2
    assert "--protocol" in capsys.readouterr().err


def test_predict_landmarks_writes_what_evaluate_reads(tmp_path, capsys):
    from maskface import build_model
    from maskface.checkpoint import save_checkpoint
    from maskface.data import synthetic

    root = tmp_path / "aflw"
    synthetic.write_aflw(root, splits=("test",), num_images=2, image_size=(96, 64), face_size=(40, 56))
    torch.manual_seed(0)
    model = build_model("mbv2", num_landmarks=19)
    model.cfg.inference.max_detections = 4  # an untrained model: keep the keypoint head's work small
    ckpt = tmp_path / "m19.pth"
    save_checkpoint(ckpt, model, model.cfg)
    predictor = protocol_predictor(model)
    assert (predictor.min_side, predictor.max_side) == (640, None)

    pred, gt, metrics = tmp_path / "pred.json", tmp_path / "gt.json", tmp_path / "m.json"
    rc = main(["predict-landmarks", "--checkpoint", str(ckpt), "--data", f"aflw:{root}", "--split", "test",
               "--protocol", "aflw19", "--out", str(pred), "--gt-out", str(gt), "--score-threshold", "0",
               "--json", str(metrics), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    p, g = json.loads(pred.read_text()), json.loads(gt.read_text())
    assert [im["image"] for im in p["images"]] == [im["image"] for im in g["images"]] == \
        ["images/test/aflw_0000.jpg", "images/test/aflw_0001.jpg"]
    assert all(len(im["faces"]) == 4 for im in p["images"]) and p["num_landmarks"] == g["num_landmarks"] == 19
    for im in p["images"]:  # original pixels of the 96 x 64 image (the network saw it at 960 x 640)
        b = np.array([f["box"] for f in im["faces"]])
        assert (b >= 0).all() and (b[:, 2] <= 96).all() and (b[:, 3] <= 64).all()
    m = json.loads(metrics.read_text())
    assert m["normaliser"] == "box" and m["iou_threshold"] == 0.4 and m["num_faces"] == 2
    assert {"mean_nme", "auc@0.08", "failure_rate@0.08", "ced@0.95", "ced_curve"} <= set(m)
    # the files it wrote give the same numbers through `evaluate landmarks`
    assert main(["evaluate", "landmarks", "--gt", str(gt), "--pred", str(pred), "--protocol", "aflw19",
                 "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == m
    # a 19-point checkpoint cannot run the 5-point protocol
    assert main(["predict-landmarks", "--checkpoint", str(ckpt), "--data", f"aflw:{root}", "--protocol", "aflw5",
                 "--out", str(pred), "--gt-out", str(gt), "--quiet"]) == 2
    assert "needs 5" in capsys.readouterr().err
