"""`maskface evaluate widerface|landmarks` and the PNG plots (predict-widerface: tests/engine/test_predict_widerface.py)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from maskface.cli import main
from maskface.evaluation.landmarks import LandmarkFile, LandmarkImage, save_landmark_file
from maskface.evaluation.plots import plot_ced_curves, plot_pr_curves
from maskface.evaluation.widerface import write_predictions


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 5  # something was drawn


def test_evaluate_widerface_cli(tmp_path, wider_gt, wider_gt_path, capsys):
    events = ["27--Spa"]
    pred = tmp_path / "pred"
    for event, name, boxes in zip(wider_gt.image_events, wider_gt.image_names, wider_gt.boxes):
        if event in events:
            write_predictions(pred, event, name, boxes.astype(float), np.linspace(1, 0.5, len(boxes)), box_format="xywh")
    out_json, out_png = tmp_path / "out" / "ap.json", tmp_path / "out" / "pr.png"
    # other events have no file: an error naming them, unless --allow-missing
    assert main(["evaluate", "widerface", "--pred", str(pred), "--gt", str(wider_gt_path), "--quiet"]) == 2
    assert "prediction files missing" in capsys.readouterr().err
    rc = main(["evaluate", "widerface", "--pred", str(pred), "--gt", str(wider_gt_path), "--events", *events,
               "--json", str(out_json), "--plot", str(out_png), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "easy" in printed and "hard" in printed
    data = json.loads(out_json.read_text())
    assert data["protocol"] == "matlab" and data["num_images"] == 21
    assert set(data["ap"]) == {"easy", "medium", "hard"}
    assert data["ap"]["hard"] == pytest.approx(1.0)
    assert len(data["curves"]["hard"]["precision"]) == 1000 and len(data["thresholds"]) == 1000
    _assert_png(out_png)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind
    # --allow-missing: the other 3205 images count as images without detections (hard AP drops)
    assert main(["evaluate", "widerface", "--pred", str(pred), "--gt", str(wider_gt_path), "--allow-missing",
                 "--json", str(out_json), "--quiet"]) == 0
    full = json.loads(out_json.read_text())
    assert full["num_images"] == 3226 and full["ap"]["hard"] < 0.05
    assert main(["evaluate", "widerface", "--pred", str(tmp_path / "missing"), "--gt", str(wider_gt_path)]) == 2
    assert "prediction folder not found" in capsys.readouterr().err
    assert main(["evaluate", "widerface", "--pred", str(pred), "--gt", str(wider_gt_path), "--events", "99--Nope"]) == 2
    assert "unknown WIDER FACE events" in capsys.readouterr().err
    assert main(["evaluate", "widerface", "--pred", str(pred), "--gt", str(tmp_path / "nogt")]) == 2
    assert "ground-truth folder not found" in capsys.readouterr().err


def test_evaluate_landmarks_cli(tmp_path, capsys):
    pts = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
    gt = LandmarkFile(5, [LandmarkImage("a", np.array([[0.0, 0.0, 100.0, 100.0]]), pts[None])])
    pred = LandmarkFile(5, [LandmarkImage("a", np.array([[1.0, 0.0, 101.0, 100.0]]), (pts + [3.0, 4.0])[None],
                                          scores=np.array([0.8]))])
    gt_path = save_landmark_file(tmp_path / "gt.json", gt)
    pred_path = save_landmark_file(tmp_path / "pred.npz", pred)
    out_json, out_png = tmp_path / "nme.json", tmp_path / "ced.png"
    rc = main(["evaluate", "landmarks", "--pred", str(pred_path), "--gt", str(gt_path), "--normaliser", "box",
               "--json", str(out_json), "--plot", str(out_png), "--per-face"])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["mean_nme"] == pytest.approx(0.05) and data["errors"] == [pytest.approx(0.05)]
    assert data["num_matched"] == 1 and data["failure_rate@0.08"] == 0.0
    _assert_png(out_png)
    assert main(["evaluate", "landmarks", "--pred", str(tmp_path / "no.json"), "--gt", str(gt_path),
                 "--normaliser", "box"]) == 2
    assert "landmark file not found" in capsys.readouterr().err


def test_plots_direct(tmp_path):
    r = np.linspace(0, 0.9, 50)
    out = plot_pr_curves({"easy": (r, 1 - r / 2, 0.91), "hard": (r * 0.8, 1 - r, 0.6)}, tmp_path / "pr.png")
    _assert_png(out)
    out = plot_ced_curves({"a": np.array([0.01, 0.02, np.inf]), "b": np.array([0.03, 0.05])}, tmp_path / "c.png",
                          max_error=0.1, threshold=0.08)
    _assert_png(out)
    with pytest.raises(ValueError, match=".png"):
        plot_ced_curves(np.array([0.1]), tmp_path / "c.jpg")
