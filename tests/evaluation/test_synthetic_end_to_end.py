"""The synthetic data runs through `maskface evaluate widerface` and `evaluate landmarks` with
nothing but what `python -m maskface.data.synthetic` writes (no published ground truth needed).

Expected values are hand-computed: predictions = the true boxes, one face left out -> recall
stops at (F-1)/F with precision 1 -> VOC AP = (F-1)/F; landmarks shifted by (3, 4) px -> each
face's NME = 5 / sqrt(w * h).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from maskface.cli import main
from maskface.data.synthetic import main as synthetic_main
from maskface.evaluation.widerface import write_predictions


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    assert synthetic_main(["widerface", str(root), "--num-images", "6", "--seed", "3"]) == 0
    gt = json.loads((root / "wider_face_split" / "wider_face_val_landmarks.json").read_text())
    return root, gt


def _faces(gt):
    return [(im["image"], face) for im in gt["images"] for face in im["faces"]]


def _write_submission(root, gt, out):
    faces = _faces(gt)
    left_out = faces[-1]
    for im in gt["images"]:
        event, name = im["image"].split("/")
        kept = [f for f in im["faces"] if (im["image"], f) != left_out]
        boxes = np.array([f["box"] for f in kept], np.float64).reshape(-1, 4)
        scores = np.linspace(0.9, 0.8, len(kept)) if kept else np.zeros(0)
        write_predictions(out, event, name, boxes, scores, box_format="xyxy")
    return len(faces)


def test_evaluate_widerface_on_synthetic_mat_and_text_ground_truth(synthetic, tmp_path, capsys):
    root, gt = synthetic
    num_faces = _write_submission(root, gt, tmp_path / "pred")
    assert num_faces >= 3
    expected = (num_faces - 1) / num_faces

    out = tmp_path / "mat.json"
    assert main(["evaluate", "widerface", "--pred", str(tmp_path / "pred"), "--gt",
                 str(root / "eval_tools" / "ground_truth"), "--json", str(out), "--quiet"]) == 0
    ap = json.loads(out.read_text())["ap"]
    assert set(ap) == {"easy", "medium", "hard"}
    for value in ap.values():
        assert value == pytest.approx(expected, abs=1e-12)

    out = tmp_path / "txt.json"
    assert main(["evaluate", "widerface", "--pred", str(tmp_path / "pred"), "--gt",
                 str(root / "wider_face_split" / "wider_face_val_bbx_gt.txt"), "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["ap"] == {"all": pytest.approx(expected, abs=1e-12)}
    assert result["num_faces"] == {"all": num_faces}
    assert ".mat files" in capsys.readouterr().out  # says what the hard/medium/easy settings need


def test_evaluate_widerface_without_ground_truth_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MASKFACE_WIDER_GT", raising=False)
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "widerface", "--pred", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert "eval_tools/ground_truth" in err and "MASKFACE_WIDER_GT" in err and "shared" not in err
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "wider_face_val.mat").write_bytes(b"")
    assert main(["evaluate", "widerface", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 2
    assert "need the .mat files" in capsys.readouterr().err


def test_evaluate_landmarks_reads_detect_json_output(synthetic, tmp_path):
    """Predictions in the `maskface detect --json` layout (one file per image, named by stem)."""
    root, gt = synthetic
    det = tmp_path / "detect"
    det.mkdir()
    expected = []
    for im in gt["images"]:
        stem = im["image"].split("/")[-1].rsplit(".", 1)[0]
        faces = []
        for face in im["faces"]:
            pts = np.asarray(face["landmarks"], np.float64) + [3.0, 4.0]
            faces.append({"box": face["box"], "score": 0.9, "landmarks": pts.tolist(), "landmark_scores": [1.0] * 5})
            if all(face.get("valid", [1] * 5)):
                x1, y1, x2, y2 = face["box"]
                expected.append(5.0 / math.sqrt((x2 - x1) * (y2 - y1)))
        (det / f"{stem}.json").write_text(json.dumps({"image": stem, "height": 256, "width": 256, "faces": faces}))
    assert expected
    out = tmp_path / "nme.json"
    rc = main(["evaluate", "landmarks", "--pred", str(det), "--gt",
               str(root / "wider_face_split" / "wider_face_val_landmarks.json"), "--normaliser", "box",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["num_matched"] == len(expected)
    assert result["mean_nme"] == pytest.approx(float(np.mean(expected)), rel=1e-9)

    # a single detect file works too (the other images are then unmatched)
    one = sorted(det.glob("*.json"))[1]
    assert main(["evaluate", "landmarks", "--pred", str(one), "--gt",
                 str(root / "wider_face_split" / "wider_face_val_landmarks.json"), "--normaliser", "box",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_matched"] >= 1
