"""WIDER FACE evaluator: .mat reader, submission layout, and the official protocol.

Expected values come from hand computations (written in the comments), from a literal
line-by-line Python transcription of the official MATLAB functions (slow, in this file), and from
GNU Octave 7.3 running the official eval_tools functions on files this file generates.
"""
from __future__ import annotations

import bisect
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest

from maskface.evaluation import widerface as wf
from maskface.evaluation.widerface import (
    PredictionFormatError,
    WiderFaceGT,
    evaluate_widerface,
    load_widerface_gt,
    normalise_scores,
    read_prediction_file,
    read_predictions,
    thresholds,
    write_predictions,
)

SETTINGS = ("easy", "medium", "hard")


# ---------------------------------------------------------------------------------------------
# Deterministic synthetic predictions (pure-Python LCG: identical on every platform / numpy)
# ---------------------------------------------------------------------------------------------


class LCG:
    def __init__(self, seed: int):
        self.x = seed & (2**64 - 1)

    def u(self) -> float:
        self.x = (6364136223846793005 * self.x + 1442695040888963407) & (2**64 - 1)
        return (self.x >> 11) / 2.0**53


def synthetic_predictions(gt: WiderFaceGT, events, seed: int = 2024) -> dict:
    """Noisy detections of ~85% of the faces (sub-pixel jitter, some near IoU 0.5), 0-2 false
    positives per image, scores in [-0.2, 1.3) with many ties (two decimals)."""
    rng = LCG(seed)
    out = {}
    for event, name, boxes in zip(gt.image_events, gt.image_names, gt.boxes):
        if event not in events:
            continue
        rows = []
        for x, y, w, h in boxes.tolist():
            if rng.u() >= 0.85:
                continue
            sw, sh = max(w, 1), max(h, 1)
            rows.append([x + (rng.u() - 0.5) * 0.5 * sw, y + (rng.u() - 0.5) * 0.5 * sh,
                         w * (0.75 + 0.5 * rng.u()), h * (0.75 + 0.5 * rng.u()), round(rng.u() * 1.5 - 0.2, 2)])
        for _ in range(int(rng.u() * 3)):
            rows.append([rng.u() * 1000, rng.u() * 700, 2 + rng.u() * 60, 2 + rng.u() * 60, round(rng.u(), 3)])
        out[(event, name)] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return out


def write_all(pred_dir: Path, preds: dict) -> None:
    # The jitter keeps the sign of the ground truth's own negative widths: kept, as the official code scores them.
    for (event, name), p in preds.items():
        write_predictions(pred_dir, event, name, p[:, :4], p[:, 4], box_format="xywh", allow_negative_sizes=True)


# ---------------------------------------------------------------------------------------------
# Literal transcription of the official functions (reference; MATLAB integer rules by hand)
# ---------------------------------------------------------------------------------------------


def m_round(v: float) -> int:
    """MATLAB round / double->int32 conversion: halves away from zero, saturating (via decimal)."""
    r = int(Decimal(v).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(-(2**31), min(2**31 - 1, r))


def m_idiv(a: int, b: int) -> int:
    if b == 0:
        return 0 if a == 0 else (2**31 - 1 if a > 0 else -(2**31))
    return m_round(a / b)


def ref_boxoverlap(gt_rows, b):
    """boxoverlap.m with a = int32 ground truth (x1 y1 x2 y2), b = double prediction."""
    out = []
    for a in gt_rows:
        x1, y1 = max(a[0], m_round(b[0])), max(a[1], m_round(b[1]))
        x2, y2 = min(a[2], m_round(b[2])), min(a[3], m_round(b[3]))
        w, h = x2 - x1 + 1, y2 - y1 + 1
        inter = w * h
        aarea = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
        barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        o = m_idiv(inter, m_round(aarea + barea) - inter)
        out.append(0 if (w <= 0 or h <= 0) else o)
    return out


def reference_org_curve(gt: WiderFaceGT, preds: dict, setting: str, events) -> tuple[np.ndarray, int]:
    """wider_eval.m (read_pred sort, norm_score, evaluation, image_evaluation, image_pr_info)."""
    lists = {}
    for key, p in preds.items():
        order = sorted(range(len(p)), key=lambda i: -p[i, 4])  # Python's sort is stable, like MATLAB's
        lists[key] = [list(map(float, p[i])) for i in order]
    hi, lo = np.float32(np.finfo(np.float32).tiny), np.float32(np.finfo(np.float32).max)
    for rows in lists.values():
        for r in rows:
            hi, lo = max(hi, np.float32(r[4])), min(lo, np.float32(r[4]))
    for rows in lists.values():
        for r in rows:
            r[4] = float((np.float32(r[4]) - lo) / (hi - lo))
    org = np.zeros((1000, 2), dtype=np.int64)
    count_face = 0
    for i, (event, name) in enumerate(zip(gt.image_events, gt.image_names)):
        if event not in events:
            continue
        keep = set(gt.keep[setting][i].tolist())
        count_face += len(keep)
        pred = lists.get((event, name), [])
        g = gt.boxes[i].tolist()
        if not g or not pred:
            continue
        g = [[x, y, x + w, y + h] for x, y, w, h in g]
        recall_list = [0] * len(g)
        proposal_list = [1] * len(pred)
        pred_recall = []
        for h_i, r in enumerate(pred):
            o = ref_boxoverlap(g, [r[0], r[1], r[0] + r[2], r[1] + r[3]])
            mo = max(o)
            idx = o.index(mo)
            if mo >= 0.5:
                if idx not in keep:
                    recall_list[idx] = -1
                    proposal_list[h_i] = -1
                elif recall_list[idx] == 0:
                    recall_list[idx] = 1
            pred_recall.append(recall_list.count(1))
        neg_scores = [-r[4] for r in pred]  # ascending: the list is sorted by score, descending
        for t in range(1, 1001):
            thresh = 1 - t / 1000
            n = bisect.bisect_right(neg_scores, -thresh)  # find(score >= thresh, 1, 'last')
            if n:
                org[t - 1, 0] += proposal_list[:n].count(1)
                org[t - 1, 1] += pred_recall[n - 1]
    return org, count_face


# ---------------------------------------------------------------------------------------------
# Ground truth reader
# ---------------------------------------------------------------------------------------------


def test_mat_reader_images_and_keep_lists(wider_gt):
    gt = wider_gt
    counts = {s: gt.num_faces(s) for s in SETTINGS}
    print(f"\nWIDER FACE val: {len(gt)} images, {len(gt.events)} events, {gt.num_faces()} boxes, "
          f"faces per setting {counts}")
    assert len(gt) == 3226
    assert len(gt.events) == 61
    assert gt.num_faces() == 39708
    # The published face counts of the three settings.
    assert counts == {"easy": 7211, "medium": 13319, "hard": 31958}
    # First image of the first event, as stored in the .mat (checked with scipy by hand).
    assert gt.events[0] == "0--Parade"
    assert gt.image_names[0] == "0_Parade_marchingband_1_465"
    assert gt.boxes[0].dtype == np.int32 and gt.boxes[0].shape == (126, 4)
    assert gt.boxes[0][0].tolist() == [345, 211, 4, 4]
    # Keep lists are 0-based, in range, unique, and nested easy <= medium <= hard.
    for i in range(len(gt)):
        sets = [set(gt.keep[s][i].tolist()) for s in SETTINGS]
        for s, k in zip(SETTINGS, sets):
            assert len(k) == gt.keep[s][i].size
            assert all(0 <= j < gt.boxes[i].shape[0] for j in k)
        assert sets[0] <= sets[1] <= sets[2]
    assert gt.index("0--Parade", "0_Parade_marchingband_1_465.jpg") == 0


def test_gt_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_widerface_gt(tmp_path / "nowhere")
    (tmp_path / "wider_face_val.mat").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="wider_easy_val.mat"):
        load_widerface_gt(tmp_path)


def test_gt_dir_from_env(monkeypatch, wider_gt_path):
    monkeypatch.setenv("MASKFACE_WIDER_GT", str(wider_gt_path))
    assert wf.find_gt_dir() == wider_gt_path


# ---------------------------------------------------------------------------------------------
# Submission layout
# ---------------------------------------------------------------------------------------------


def test_writer_layout_and_round_trip(tmp_path):
    path = write_predictions(tmp_path, "0--Parade", "sub/0_Parade_x_1.jpg",
                             [[10, 20, 30, 60], [0.5, 1.25, 2.5, 3.0]], [0.5, 0.125])
    assert path == tmp_path / "0--Parade" / "0_Parade_x_1.txt"
    # xyxy -> x y w h with w = x2 - x1
    assert path.read_text() == ("0_Parade_x_1\n2\n10.0000 20.0000 20.0000 40.0000 0.5\n"
                                "0.5000 1.2500 2.0000 1.7500 0.125\n")
    arr = read_prediction_file(path)
    np.testing.assert_array_equal(arr, [[10, 20, 20, 40, 0.5], [0.5, 1.25, 2.0, 1.75, 0.125]])
    write_predictions(tmp_path, "e", "img", [[1, 2, 3, 4]], [1.0], box_format="xywh")
    np.testing.assert_array_equal(read_prediction_file(tmp_path / "e" / "img.txt"), [[1, 2, 3, 4, 1.0]])
    empty = write_predictions(tmp_path, "e", "none", np.zeros((0, 4)), [])
    assert empty.read_text() == "none\n0\n"
    assert read_prediction_file(empty).shape == (0, 5)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary file
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        write_predictions(tmp_path, "e", "bad", [[0, 0, 1, 1], [0, 0, 1, 1]], [1.0])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("img\n", "no count line"),
        ("img\ntwo\n", "number of boxes"),
        ("img\n2\n1 2 3 4 0.5\n", "announces 2 boxes but has 1"),
        ("img\n1\n1 2 3 4\n", "has 4 values"),
        ("img\n1\n1 2 3 x 0.5\n", "not numeric"),
        ("img\n1\n1 2 3 nan 0.5\n", "non-finite"),
        ("img\n2\n1 2 3 4 0.5\n1 2 -3 4 0.5\n", r"line 4 has a negative box size \(w -3, h 4\)"),
        ("img\n1\n1 2 3 -0.5 0.5\n", "negative box size"),
    ],
)
def test_reader_rejects_malformed_files_naming_them(tmp_path, text, message):
    path = tmp_path / "ev" / "img.txt"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(PredictionFormatError, match=message) as info:
        read_prediction_file(path)
    assert str(path) in str(info.value)


def test_reader_tolerates_trailing_blank_lines_and_extra_columns(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("img\n2\n1 2 3 4 0.9 7 7\n5,6,7,8,0.1\n\n\n")
    np.testing.assert_array_equal(read_prediction_file(path), [[1, 2, 3, 4, 0.9], [5, 6, 7, 8, 0.1]])


def _tiny_gt() -> WiderFaceGT:
    """Three images of one event. Faces (x, y, w, h):
    a: F1 [10 10 20 20] keep, F2 [100 10 20 20] keep, F3 [200 10 20 20] keep, F4 [300 300 20 20] ignored
    b: F5 [10 10 30 30] keep, F6 [100 100 30 30] keep
    c: F7 [50 50 40 40] keep
    """
    boxes = [
        np.array([[10, 10, 20, 20], [100, 10, 20, 20], [200, 10, 20, 20], [300, 300, 20, 20]], np.int32),
        np.array([[10, 10, 30, 30], [100, 100, 30, 30]], np.int32),
        np.array([[50, 50, 40, 40]], np.int32),
    ]
    keep = [np.array([0, 1, 2]), np.array([0, 1]), np.array([0])]
    return WiderFaceGT(events=["0--Test"], image_events=["0--Test"] * 3, image_names=["a", "b", "c"],
                       boxes=boxes, keep={s: keep for s in SETTINGS})


def test_missing_prediction_files(tmp_path):
    gt = _tiny_gt()
    write_predictions(tmp_path, "0--Test", "a", [[10, 10, 30, 30]], [0.9])
    with pytest.raises(FileNotFoundError) as info:
        read_predictions(tmp_path, gt)
    msg = str(info.value)
    assert "2 of 3 prediction files missing" in msg
    assert str(tmp_path / "0--Test" / "b.txt") in msg and str(tmp_path / "0--Test" / "c.txt") in msg
    preds = read_predictions(tmp_path, gt, allow_missing=True)
    assert preds[1] is None and preds[2] is None and preds[0].shape == (1, 5)
    with pytest.raises(FileNotFoundError, match="prediction folder not found"):
        read_predictions(tmp_path / "nope", gt)


# ---------------------------------------------------------------------------------------------
# Protocol on hand-built cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["matlab", "continuous"])
def test_hand_case_known_false_positives_and_misses(tmp_path, protocol):
    gt = _tiny_gt()
    # Predictions (x, y, w, h, score); scores 1.0 .. 0.0 so the normalisation is the identity.
    write_predictions(tmp_path, "0--Test", "a", [
        [10, 10, 20, 20],    # p1 1.0: F1 exactly                       -> TP
        [500, 500, 10, 10],  # p2 0.8: nothing                          -> FP
        [300, 300, 20, 20],  # p3 0.6: F4, an ignored face              -> neither
        [11, 10, 20, 20],    # p5 0.2: F1 again (IoU 420/462 = 0.91)    -> FP (already recalled)
        [100, 10, 20, 20],   # p6 0.0: F2                               -> TP
    ], [1.0, 0.8, 0.6, 0.2, 0.0], box_format="xywh")
    write_predictions(tmp_path, "0--Test", "b", [[10, 10, 30, 30]], [0.4], box_format="xywh")  # p4: F5 -> TP
    write_predictions(tmp_path, "0--Test", "c", np.zeros((0, 4)), [])  # F7 missed (no detection)
    result = evaluate_widerface(read_predictions(tmp_path, gt), gt, protocol=protocol)
    # 6 faces count (F1 F2 F3 F5 F6 F7). Sweeping the threshold down:
    #   score >= 0.999 : p1            proposals 1 recalled 1  P 1    R 1/6
    #   score >= 0.8   : + p2          proposals 2 recalled 1  P 1/2  R 1/6
    #   score >= 0.6   : + p3 ignored  proposals 2 recalled 1  P 1/2  R 1/6
    #   score >= 0.4   : + p4          proposals 3 recalled 2  P 2/3  R 2/6
    #   score >= 0.2   : + p5          proposals 4 recalled 2  P 1/2  R 2/6
    #   score >= 0.0   : + p6          proposals 5 recalled 3  P 3/5  R 3/6
    # Precision envelope (max to the right): 1 up to R 1/6, 2/3 up to 2/6, 3/5 up to 3/6, then 0.
    # AP = 1/6 * 1 + 1/6 * 2/3 + 1/6 * 3/5 = (15 + 10 + 9) / 90 = 17/45.
    for s in SETTINGS:
        c = result.curves[s]
        assert c.num_faces == 6
        assert c.ap == pytest.approx(17 / 45, abs=1e-12)
        th = result.thresholds
        for level, props, rec in [(0.999, 1, 1), (0.8, 2, 1), (0.6, 2, 1), (0.5, 2, 1), (0.4, 3, 2),
                                  (0.2, 4, 2), (0.0, 5, 3)]:
            t = int(np.argmin(np.abs(th - level)))
            assert (c.proposals[t], c.recalled[t]) == (props, rec), level
        np.testing.assert_allclose(c.recall[-1], 0.5)
        np.testing.assert_allclose(c.precision[-1], 0.6)


def test_thresholds_are_the_official_ones():
    th = thresholds()
    assert th.shape == (1000,)
    assert th[0] == 1 - 1 / 1000 and th[-1] == 0.0 and th[499] == 0.5
    assert np.all(np.diff(th) < 0)


def test_score_normalisation_global_min_max():
    # Over all images: min 2, max 4 -> (s - 2) / 2.
    out = normalise_scores([np.array([4.0, 3.0]), np.array([]), np.array([2.0])])
    assert out[0].tolist() == [1.0, 0.5] and out[1].size == 0 and out[2].tolist() == [0.0]
    # MATLAB seeds the maximum with realmin('single'): with only negative scores the maximum stays
    # ~1.2e-38, so the best score normalises to (-1 - -3) / (0 - -3) = 2/3 (in single precision).
    neg = normalise_scores([np.array([-1.0, -3.0])])[0]
    assert neg[0] == float(np.float32(2) / np.float32(3)) and neg[1] == 0.0
    # Single precision, as in MATLAB: 0.1 normalised over [0, 1] is float32(0.1), not 0.1.
    assert normalise_scores([np.array([0.1, 0.0, 1.0])])[0][0] == float(np.float32(0.1))
    assert normalise_scores([np.array([0.1, 0.0, 1.0])], protocol="continuous")[0][0] == 0.1
    with pytest.warns(RuntimeWarning, match="all prediction scores are equal"):
        assert normalise_scores([np.array([0.7, 0.7])])[0].tolist() == [1.0, 1.0]


def test_threshold_sweep_counts_scores_equal_to_the_threshold():
    # One face, three predictions on it: scores 1, 0.5, 0 (normalised: the same values).
    gt = WiderFaceGT(["e"], ["e"], ["i"], [np.array([[0, 0, 10, 10]], np.int32)], {s: [np.array([0])] for s in SETTINGS})
    preds = [np.array([[0, 0, 10, 10, 1.0], [0, 0, 10, 10, 0.5], [0, 0, 10, 10, 0.0]])]
    c = evaluate_widerface(preds, gt).curves["hard"]
    # thresholds 1 - t/1000: score 0.5 enters at t = 500 (0.5 >= 0.5), score 0 at t = 1000 (0 >= 0).
    expected = np.array([1] * 499 + [2] * 500 + [3])
    np.testing.assert_array_equal(c.proposals, expected)
    np.testing.assert_array_equal(c.recalled, np.ones(1000))
    # duplicates are false positives: precision 1/1, then 1/2, then 1/3; AP = recall 1 * precision 1
    assert c.precision[0] == 1.0 and c.precision[500] == 0.5 and c.precision[-1] == pytest.approx(1 / 3)
    assert c.ap == 1.0


def test_matlab_integer_overlap_rules():
    gt = np.array([[0, 0, 9, 9]], np.int32)  # 10 x 10 pixels with the +1 convention: x 0..9
    # Exact IoU 0.5: box 0..9 x 0..4 (inter 50, union 100) -> round(0.5) = 1 -> matched.
    assert wf.overlap_matlab(np.array([[0.0, 0.0, 9.0, 4.0]]), gt).tolist() == [[1]]
    # IoU 0.45 (0..8 x 0..4: inter 45, union 100) -> round(0.45) = 0 -> not matched ...
    assert wf.overlap_matlab(np.array([[0.0, 0.0, 8.0, 4.0]]), gt).tolist() == [[0]]
    # ... while real IoU 0.475 (x 0..8.5: inter 47.5, union 100) gives 1: x2 = 8.5 rounds to 9 in
    # the intersection (inter 10 * 5 = 50) and the union is round(100 + 47.5) - 50 = 98 -> 50/98.
    assert wf.overlap_matlab(np.array([[0.0, 0.0, 8.5, 4.0]]), gt).tolist() == [[1]]
    # The first face with overlap 1 wins, not the face of highest real IoU.
    two = np.array([[0, 0, 9, 9], [0, 0, 10, 10]], np.int32)
    pred = np.array([[0.0, 0.0, 10.0, 10.0]])  # identical to face 1, IoU 100/121 with face 0
    assert wf.assign_faces([pred], [two], "matlab")[0].tolist() == [0]
    assert wf.assign_faces([pred], [two], "continuous")[0].tolist() == [1]


def test_assign_faces_matches_the_dense_overlap(wider_gt):
    """The sparse/global matcher equals argmax/max over the dense official overlap matrix."""
    events = ["54--Rescue", "36--Football", "39--Ice_Skating", "7--Cheering"]
    preds = synthetic_predictions(wider_gt, events, seed=5)
    keys = list(preds)
    boxes = [wider_gt.boxes[wider_gt.index(*k)] for k in keys]
    for protocol, dense in (("matlab", wf.overlap_matlab), ("continuous", wf.overlap_continuous)):
        got = wf.assign_faces([preds[k][:, :4] for k in keys], boxes, protocol)
        for k, b, g in zip(keys, boxes, got):
            p = preds[k][:, :4]
            if p.shape[0] == 0:
                continue
            o = dense(p, b)
            best = o.argmax(axis=1)
            want = np.where(o[np.arange(len(p)), best] >= 0.5, best, -1)
            np.testing.assert_array_equal(g, want, err_msg=f"{protocol} {k}")
    # Huge coordinates take the exact (saturating) path and still agree with the dense overlap.
    far = np.array([[3e9, 5.0, 10.0, 10.0], [0.0, 0.0, 5e4, 5e4]])
    face = np.array([[0, 0, 50000, 50000], [3, 5, 10, 10]], np.int32)
    o = wf.overlap_matlab(far, face)
    assert wf.assign_faces([far], [face], "matlab")[0].tolist() == [
        int(o[0].argmax()) if o[0].max() >= 0.5 else -1, int(o[1].argmax()) if o[1].max() >= 0.5 else -1]


# ---------------------------------------------------------------------------------------------
# Against independent references
# ---------------------------------------------------------------------------------------------

REF_EVENTS = ("54--Rescue", "27--Spa", "39--Ice_Skating")


def test_equals_literal_transcription_of_the_official_code(wider_gt):
    preds = synthetic_predictions(wider_gt, REF_EVENTS)
    result = evaluate_widerface(preds, wider_gt, events=REF_EVENTS)
    for s in SETTINGS:
        org, faces = reference_org_curve(wider_gt, preds, s, REF_EVENTS)
        c = result.curves[s]
        assert c.num_faces == faces
        np.testing.assert_array_equal(c.proposals, org[:, 0], err_msg=s)
        np.testing.assert_array_equal(c.recalled, org[:, 1], err_msg=s)


# GNU Octave 7.3 running the official functions (read_pred, norm_score, evaluation with
# image_evaluation / image_pr_info / boxoverlap, VOCap, transcribed from eval_tools with the
# event loop restricted to these events) on the files synthetic_predictions(seed 2024) writes.
# Per setting: AP, faces, and (proposals, recalled) at thresholds t = 250, 500, 1000.
OCTAVE_EVENTS = ("54--Rescue", "27--Spa", "39--Ice_Skating", "36--Football")
OCTAVE_RESULT = {
    "easy": (0.23947263375876274, 322, {250: (150, 56), 500: (328, 99), 1000: (678, 216)}),
    "medium": (0.30003482283984184, 495, {250: (176, 82), 500: (381, 152), 1000: (794, 332)}),
    "hard": (0.46308461050845662, 1246, {250: (318, 224), 500: (641, 412), 1000: (1316, 853)}),
}


def test_equals_octave_run_of_the_official_code(tmp_path, wider_gt):
    preds = synthetic_predictions(wider_gt, OCTAVE_EVENTS)
    write_all(tmp_path, preds)
    sub = wider_gt.subset(OCTAVE_EVENTS)
    result = evaluate_widerface(read_predictions(tmp_path, sub, allow_negative_sizes=True), sub)
    # The same files under the real-valued IoU rule (the common Python port) score differently:
    # the integer overlap of the official code matters.
    cont = evaluate_widerface(read_predictions(tmp_path, sub, allow_negative_sizes=True), sub, protocol="continuous")
    for s in SETTINGS:
        ap, faces, counts = OCTAVE_RESULT[s]
        c = result.curves[s]
        print(f"{s}: AP {c.ap:.6f} (Octave {ap:.6f}; continuous IoU {cont.curves[s].ap:.6f})")
        assert c.ap == pytest.approx(ap, abs=1e-15), s
        assert c.num_faces == faces
        for t, pair in counts.items():
            assert (c.proposals[t - 1], c.recalled[t - 1]) == pair, (s, t)
        assert cont.curves[s].ap != pytest.approx(ap, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Perfect predictions on the published ground truth
# ---------------------------------------------------------------------------------------------


def _clean_perfect(gt: WiderFaceGT):
    """Every annotated box as a prediction, except what no prediction can match: negative-size
    boxes (their +1-convention area is <= 0, IoU 0 even with themselves) and exact duplicates
    (the second copy of a box). Returns per image (predicted face indices, dropped faces)."""
    chosen, dropped = [], []
    for b in gt.boxes:
        sel, seen, drop = [], set(), []
        for j, row in enumerate(b.tolist()):
            if row[2] < 0 or row[3] < 0 or tuple(row) in seen:
                drop.append(j)
                continue
            seen.add(tuple(row))
            sel.append(j)
        chosen.append(np.array(sel, dtype=np.int64))
        dropped.append(drop)
    return chosen, dropped


def _first_face_at_half_iou(b: np.ndarray) -> np.ndarray:
    """For integer (x, y, w, h) boxes: index of the first box with IoU >= 0.5 (+1 pixel convention)
    to each box, -1 if none (on integer boxes MATLAB's round(inter / union) >= 0.5 is exactly this)."""
    x1, y1 = b[:, 0].astype(np.int64), b[:, 1].astype(np.int64)
    x2, y2 = x1 + b[:, 2], y1 + b[:, 3]
    w = np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]) + 1
    h = np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]) + 1
    area = (b[:, 2].astype(np.int64) + 1) * (b[:, 3] + 1)
    inter = w * h
    hit = (w > 0) & (h > 0) & (2 * inter >= area[:, None] + area[None] - inter)
    return np.where(hit.any(axis=0), hit.argmax(axis=0), -1)


@pytest.fixture(scope="module")
def perfect_dir(tmp_path_factory, wider_gt):
    """Clean perfect predictions written through the submission writer. Scores: faces whose own
    box is taken by an earlier face under the official rule (see test below) get the lowest
    scores (0.0 .. 0.001), all others distinct scores in [0.5, 1]."""
    gt = wider_gt
    chosen, _ = _clean_perfect(gt)
    out = tmp_path_factory.mktemp("perfect")
    shadowed = {}
    for i, (event, name, b, sel) in enumerate(zip(gt.image_events, gt.image_names, gt.boxes, chosen)):
        # The official rule on integer boxes: the first face with IoU >= 0.5 takes the prediction.
        first = _first_face_at_half_iou(b)
        sh = [j for j in sel.tolist() if first[j] != j]
        shadowed[i] = sh
        n = len(sel)
        scores = 0.5 + 0.5 * (np.arange(n) + 1) / (n + 1) - 1e-7 * (i % 1000)
        for k, j in enumerate(sel.tolist()):
            if j in sh:
                scores[k] = 0.001 * (k % 2)
        write_predictions(out, event, name, b[sel].astype(np.float64), scores, box_format="xywh")
    return out, shadowed


def test_perfect_predictions_continuous_protocol(perfect_dir, wider_gt):
    pred_dir, _ = perfect_dir
    result = evaluate_widerface(read_predictions(pred_dir, wider_gt), wider_gt, protocol="continuous")
    print({s: c.ap for s, c in result.curves.items()})
    assert result.curves["easy"].ap == pytest.approx(1.0, abs=1e-12)
    assert result.curves["medium"].ap == pytest.approx(1.0, abs=1e-12)
    # Hard keeps two faces no prediction can recall: a duplicated annotation (21_Festival_
    # Festival_21_604 faces 64 and 103 are the same box) and a box of width -2
    # (39_Ice_Skating_iceskiing_39_583 face 7). All other faces recalled at precision 1:
    # AP = (31958 - 2) / 31958.
    assert result.curves["hard"].ap == pytest.approx(31956 / 31958, abs=1e-12)


def test_perfect_predictions_official_protocol(perfect_dir, wider_gt):
    """Under the official MATLAB arithmetic the overlap is an integer, round(IoU), so a prediction
    goes to the *first* face with IoU >= 0.5, not to the identical face. A few published faces
    overlap an earlier face by IoU >= 0.5 (near-duplicate annotations); their perfect predictions
    land on the earlier face and they are never recalled. With those predictions scored lowest,
    precision stays 1 while every other face is recalled: AP = recallable / faces."""
    pred_dir, shadowed = perfect_dir
    gt = wider_gt
    _, dropped = _clean_perfect(gt)
    result = evaluate_widerface(read_predictions(pred_dir, gt), gt)
    for s in SETTINGS:
        lost = sum(len(set(shadowed[i]) & set(gt.keep[s][i].tolist())) + len(set(dropped[i]) & set(gt.keep[s][i].tolist()))
                   for i in range(len(gt)))
        faces = gt.num_faces(s)
        print(f"{s}: {lost} of {faces} faces cannot be recalled by their own box; AP {result.curves[s].ap:.6f}")
        assert result.curves[s].ap == pytest.approx((faces - lost) / faces, abs=1e-12)
    # Events without such annotations: AP exactly 1 on every setting under both protocols.
    clean_events = [e for e in gt.events if all(not shadowed[i] and not dropped[i]
                                                for i, ev in enumerate(gt.image_events) if ev == e)]
    assert len(clean_events) >= 50
    sub = gt.subset(clean_events)
    preds = read_predictions(pred_dir, sub)
    for protocol in ("matlab", "continuous"):
        r = evaluate_widerface(preds, sub, protocol=protocol)
        assert r.ap == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 1.0}, abs=1e-12), protocol


def test_full_val_against_itself_from_the_folder(perfect_dir, wider_gt, wider_gt_path):
    """The whole val set read from the submission folder and evaluated in one call gives what the
    in-memory path gives (its speed is not asserted: wall-clock checks belong to benchmarks)."""
    pred_dir, _ = perfect_dir
    result = wf.evaluate_widerface_dir(pred_dir, wider_gt_path)
    print(f"\nfull WIDER FACE val (3226 images, {result.num_predictions} boxes): {result.summary()}")
    chosen, _ = _clean_perfect(wider_gt)
    assert result.num_images == 3226 and result.num_predictions == sum(len(c) for c in chosen)
    assert result.ap == evaluate_widerface(read_predictions(pred_dir, wider_gt), wider_gt).ap


def test_writer_refuses_boxes_of_negative_size(tmp_path):
    with pytest.raises(ValueError, match=r"ev/img: box 1 has a negative size \(w -10, h 5\)"):
        wf.write_predictions(tmp_path, "ev", "img", np.array([[0, 0, 10, 10], [20, 0, 10, 5]]), np.array([0.9, 0.8]))
    with pytest.raises(ValueError, match="negative size"):
        wf.write_predictions(tmp_path, "ev", "img", np.array([[0, 0, 4, -1]]), np.array([0.9]), box_format="xywh")
    assert not list(tmp_path.rglob("*.txt"))  # nothing written
    wf.write_predictions(tmp_path, "ev", "img", np.array([[5, 5, 5, 9]]), np.array([0.9]))  # zero width is fine
