"""export/precision_compare.py on hand-built detections: every expected number is worked out here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from export.precision_compare import INT8_GOALS, compare_paths, write_report

THRESHOLD = 0.5


@dataclass
class Record:
    image_path: str
    boxes: np.ndarray
    landmarks: np.ndarray
    landmark_valid: np.ndarray


def face_points(box) -> np.ndarray:
    """Five points inside a box: eyes 20 px apart for the 40 px boxes used here."""
    x1, y1 = box[0], box[1]
    return np.array([[x1 + 10, y1 + 12], [x1 + 30, y1 + 12], [x1 + 20, y1 + 22], [x1 + 12, y1 + 32],
                     [x1 + 28, y1 + 32]], np.float64)


class FakePipeline:
    """Pipeline-like: the image is a key into fixed outputs; has .inference like maskface.pipeline.Pipeline."""

    def __init__(self, outputs: dict[str, list[tuple]]):
        self.inference = SimpleNamespace(score_threshold=THRESHOLD)
        self.outputs = outputs

    def __call__(self, image):
        dets = self.outputs[image]
        return {"boxes": np.array([d[0] for d in dets], np.float32).reshape(-1, 4),
                "scores": np.array([d[1] for d in dets], np.float32),
                "landmarks": np.array([d[2] for d in dets], np.float32).reshape(-1, 5, 2),
                "landmark_scores": np.ones((len(dets), 5), np.float32)}


BOX_A = np.array([10.0, 10.0, 50.0, 50.0])
BOX_B = np.array([100.0, 100.0, 140.0, 140.0])
BOX_C = np.array([200.0, 10.0, 240.0, 50.0])  # a labelled face only the reference finds
SMALL = np.array([300.0, 300.0, 310.0, 310.0])  # 10 px: matched detections are ignored
NOWHERE = np.array([400.0, 400.0, 440.0, 440.0])  # no face there: a false positive


def make_case():
    gt = np.stack([BOX_A, BOX_B, BOX_C, SMALL])
    landmarks = np.stack([face_points(b) for b in gt])
    valid = np.ones((4, 5), bool)
    valid[1] = False  # face B has no teacher landmarks: no NME for it
    records = [Record("img0", gt, landmarks, valid)]
    shift = np.array([2.0, 0.0])
    reference = FakePipeline({"img0": [
        (BOX_A, 0.9, face_points(BOX_A) + shift),  # NME 2 / 20 = 0.1 (eyes 20 px apart)
        (BOX_B, 0.8, face_points(BOX_B)),
        (BOX_C, 0.55, face_points(BOX_C)),
        (SMALL, 0.7, face_points(SMALL)),
        (NOWHERE, 0.6, face_points(NOWHERE)),
        (BOX_B + 60, 0.3, face_points(BOX_B + 60)),  # below the threshold: never counted
    ]})
    landmark_offset = face_points(BOX_A) + shift
    landmark_offset[2] += (3.0, 4.0)  # one point 5 px away
    candidate = FakePipeline({"img0": [
        (BOX_A + np.array([0.5, 0.0, 0.0, -0.25]), 0.85, landmark_offset),  # box drift 0.5, score drift 0.05
        (BOX_B + 2.0, 0.8, face_points(BOX_B)),  # box drift 2.0
        (BOX_B + 3.0, 0.75, face_points(BOX_B)),  # overlaps B, but B is taken by the better-scored box: added
        (SMALL, 0.7, face_points(SMALL)),
        (NOWHERE, 0.6, face_points(NOWHERE)),
        (BOX_C, 0.45, face_points(BOX_C)),  # fell below the threshold: C is lost
    ]})
    return reference, candidate, records


def run_case(**kwargs):
    reference, candidate, records = make_case()
    return compare_paths(reference, candidate, records, read=lambda r: r.image_path, progress=False,
                         names=("fp32", "int8"), **kwargs)


def test_recall_fp_and_nme_against_labels():
    report = run_case()
    ref, cand = report["paths"]["fp32"], report["paths"]["int8"]
    # 3 faces >= 20 px (A, B, C); SMALL is ignored. Reference: A, B, C found, NOWHERE is the one FP.
    assert ref["faces_ge_min"] == 3 and ref["tp"] == 3 and ref["fp"] == 1
    assert ref["recall"] == pytest.approx(1.0) and ref["fp_per_image"] == pytest.approx(1.0)
    # Candidate: A, B found; C fell below the threshold; the duplicate on B and NOWHERE are FPs.
    assert cand["tp"] == 2 and cand["fp"] == 2 and cand["recall"] == pytest.approx(2 / 3)
    # NME over faces with landmarks (A and C for the reference, A for the candidate; B has none).
    assert ref["nme_faces"] == 2 and ref["nme_mean"] == pytest.approx((0.1 + 0.0) / 2)
    # candidate A: four points 2 px off, one point at (2+3, 4) -> sqrt(25 + 16)
    assert cand["nme_faces"] == 1 and cand["nme_mean"] == pytest.approx((4 * 2.0 + np.sqrt(41.0)) / 5 / 20)


def test_drift_between_paths():
    d = run_case()["drift"]
    # pairs: A (box 0.5, score 0.05, one point 5 px), B (box 2.0), SMALL and NOWHERE (0)
    assert d["pairs"] == 4 and d["reference_detections"] == 5
    assert d["box_px"]["max"] == pytest.approx(2.0)
    assert d["box_px"]["median"] == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert d["box_px"]["p90"] == pytest.approx(0.5 + 0.7 * 1.5)  # index 0.9 * 3 = 2.7
    assert d["box_relative"]["max"] == pytest.approx(2.0 / 40)  # the reference boxes are 40 px (SMALL: 0 drift)
    boxes = np.sort([0.5, 2.0, 0.0, 0.0])  # numpy percentile, linear: index 0.99 * 3 = 2.97
    assert d["box_px"]["p99"] == pytest.approx(boxes[2] + 0.97 * (boxes[3] - boxes[2]))
    assert d["landmark_px"]["count"] == 20 and d["landmark_px"]["max"] == pytest.approx(5.0)
    # 19 zeros and one 5: index 0.99 * 19 = 18.81 lies between a 0 and the 5
    assert d["landmark_px"]["p99"] == pytest.approx(0.81 * 5.0)
    assert d["score"]["max"] == pytest.approx(0.05, abs=1e-6)
    assert d["lost"] == 1 and d["lost_max_score"] == pytest.approx(0.55)
    assert d["added"] == 1 and d["added_max_score"] == pytest.approx(0.75)


def test_goals_and_identical_paths():
    report = run_case()
    goals = {g["goal"]: g for g in report["goals"]}
    assert set(goals) == set(INT8_GOALS)
    assert not goals["p99_box_drift_px"]["passed"]  # 0.5 + 0.97 * 1.5 = 1.955 > 1
    assert not goals["p99_landmark_drift_px"]["passed"]  # 4.05 > 1
    assert goals["max_recall_loss"]["measured"] == pytest.approx(1 / 3) and not goals["max_recall_loss"]["passed"]
    reference, _, records = make_case()
    same = compare_paths(reference, reference, records, read=lambda r: r.image_path, progress=False)
    assert all(g["passed"] for g in same["goals"])
    assert same["drift"]["box_px"]["max"] == 0 and same["drift"]["lost"] == same["drift"]["added"] == 0
    looser = run_case(goals={"p99_box_drift_px": 2.0})
    assert [g["passed"] for g in looser["goals"]] == [True]


def test_score_threshold_argument_overrides_the_pipeline():
    # At 0.4 the candidate keeps C (0.45): nothing is lost, recall is equal.
    report = run_case(score_threshold=0.4)
    assert report["drift"]["lost"] == 0
    assert report["paths"]["int8"]["recall"] == pytest.approx(1.0)


def test_write_report(tmp_path: Path):
    report = run_case()
    json_path, md_path, png = write_report(report, tmp_path)
    data = json.loads(json_path.read_text())
    assert "drift_samples" not in data and data["drift"]["lost"] == 1
    md = md_path.read_text()
    assert "| p99_box_drift_px | 1 | 1.9550 | NO |" in md
    assert "| int8 | 0.6667 |" in md
    pytest.importorskip("matplotlib")
    assert png is not None and png.stat().st_size > 0
