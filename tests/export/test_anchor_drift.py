"""export/anchor_drift.py: the exposed anchor indices are the detector's own top-k ranking, and the drift
at fixed anchors is what hand computation gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from export import anchor_drift  # noqa: E402
from maskface.preprocess import Prepared  # noqa: E402


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    import onnx

    from export.export_onnx import export_detector
    from maskface import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("anchors") / "detector.onnx"
    export_detector(build_model("tiny").eval(), path)
    return onnx.load(str(path))


def test_exposed_indices_rank_the_scores_of_every_anchor(tiny_detector, tmp_path):
    """Reference: the TopK's own input (every anchor's score), exposed by hand here; gathering it at the
    exposed indices must give the graph's `scores` output, in descending order."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = anchor_drift.expose_anchor_indices(tiny_detector)
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    model.graph.output.append(helper.make_tensor_value_info(topk.input[0], TensorProto.FLOAT, None))
    onnx.save(model, str(tmp_path / "d.onnx"))
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 160)).astype(np.float32)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": x})))
    anchors, every = out[anchor_drift.ANCHOR_OUTPUT][0], out[topk.input[0]][0]
    assert anchors.dtype == np.int64 and len(set(anchors.tolist())) == len(anchors)
    np.testing.assert_array_equal(out["scores"][0], every[anchors])
    assert np.all(np.diff(out["scores"][0]) <= 0)
    assert [o.name for o in model.graph.output][-2] == anchor_drift.ANCHOR_OUTPUT  # appended after the maps


def test_a_graph_without_the_ranking_topk_is_refused(tiny_detector):
    model = type(tiny_detector)()
    model.CopyFrom(tiny_detector)
    for node in model.graph.node:
        if node.op_type == "TopK":
            node.output[0] = "renamed"
    with pytest.raises(ValueError, match="TopK"):
        anchor_drift.expose_anchor_indices(model)


class Landmarks:
    """A keypoint head whose one landmark is the ROI's top-left corner plus `shift` (input pixels)."""

    def __init__(self, shift: float):
        self.shift = shift

    def keypoints(self, features, rois):
        return np.asarray(rois)[:, None, 1:3] + self.shift, np.ones((len(rois), 1), np.float32)


def test_drift_at_the_same_anchors_by_hand():
    # reference top-k: anchors 7, 3, 9; FP32 keeps slots 0 and 2 (anchors 7 and 9)
    ref_boxes = np.array([[10, 10, 50, 50], [0, 0, 5, 5], [100, 100, 140, 150]], np.float32)
    ref = (Landmarks(0.0), (None, ref_boxes, np.array([7, 3, 9]), []))
    # candidate top-k in another order; anchor 9 at slot 0 moved by (+1, 0, 0, -2), anchor 7 at slot 2 by +0.5
    cand_boxes = np.array([[101, 100, 140, 148], [0, 0, 1, 1], [10.5, 10.5, 50.5, 50.5]], np.float32)
    cand = (Landmarks(0.25), (None, cand_boxes, np.array([9, 4, 7]), []))
    prepared = Prepared(image=np.zeros((3, 1, 1), np.float32), scale_xy=(0.5, 0.5), original_size=(1000, 1000))
    got = anchor_drift.same_anchor_drift(ref, cand, np.array([0, 2]), prepared)
    assert got["anchors"] == 2 and got["missing"] == 0
    # original pixels = input pixels / 0.5: anchor 7 moved 0.5 -> 1.0; anchor 9 max(1, 2) -> 4.0
    assert got["box_px"] == pytest.approx([1.0, 4.0])
    # FP32's boxes in original pixels: (20, 20, 100, 100) and (200, 200, 280, 300): longer sides 80, 100
    assert got["box_side_px"] == pytest.approx([80.0, 100.0])
    # landmark: corner shift (0.5, 0.5) and head shift 0.25 -> (0.75, 0.75) input px; anchor 9: (1.25, 0.25)
    assert got["landmark_px"] == pytest.approx([np.hypot(1.5, 1.5), np.hypot(2.5, 0.5)])

    gone = (cand[0], (None, cand_boxes, np.array([1, 4, 7]), []))  # anchor 9 fell out of the top-k
    got = anchor_drift.same_anchor_drift(ref, gone, np.array([0, 2]), prepared)
    assert got["missing"] == 1 and got["box_px"] == pytest.approx([1.0])
    assert got["landmark_px"] == pytest.approx([np.hypot(1.5, 1.5)])

    # anchor 7 gone instead: the reference landmarks, computed once for both kept slots, are taken at the
    # second position; given precomputed they give the same drift
    gone = (cand[0], (None, cand_boxes, np.array([9, 4, 1]), []))
    once = anchor_drift.reference_landmarks(ref, np.array([0, 2]))
    for given in (None, once):
        got = anchor_drift.same_anchor_drift(ref, gone, np.array([0, 2]), prepared, given)
        assert got["missing"] == 1 and got["box_px"] == pytest.approx([4.0])
        assert got["landmark_px"] == pytest.approx([np.hypot(2.5, 0.5)])


def test_box_drift_by_face_size_by_hand():
    """The demo evaluation's buckets 20-64 / 64-224 / >= 224 px, the smallest also taking faces < 20 px."""
    got = anchor_drift.box_drift_by_size([1.0, 0.5, 4.0, 2.0, 10.0], [30.0, 12.0, 100.0, 224.0, 500.0])
    assert [b["side_px"] for b in got] == [[0.0, 64], [64, 224], [224, 1e9]]
    assert [b["count"] for b in got] == [2, 1, 2]
    assert got[0]["max"] == 1.0 and got[0]["median"] == pytest.approx(0.75)
    assert got[1]["median"] == 4.0
    assert got[2]["median"] == pytest.approx(6.0) and got[2]["max"] == 10.0
    empty = anchor_drift.box_drift_by_size([1.0], [30.0])
    assert empty[2]["count"] == 0 and empty[2]["p99"] is None
    assert [anchor_drift.bucket_label(*b["side_px"]) for b in got] == ["< 64", "64-224", ">= 224"]


def test_the_report_shows_drift_by_face_size():
    stats = {"count": 3, "median": 0.25, "p90": 1.0, "p99": 2.0, "max": 3.0, "mean": 0.5}
    by_size = [{"side_px": [0.0, 64], **stats}, {"side_px": [64, 224], **stats},
               {"side_px": [224, 1e9], "count": 0, "median": None, "p90": None, "p99": None, "max": None, "mean": None}]
    relative = {"count": 3, "median": 0.006, "p90": 0.02, "p99": 0.045, "max": 0.1, "mean": 0.01}
    report = {"settings": {"images": 2, "score_threshold": 0.5, "anchors": 3},
              "rows": [{"path": "int8", "missing": 0, "box_px": stats, "landmark_px": stats, "box_relative": relative,
                        "box_px_by_size": by_size}]}
    text = anchor_drift.to_markdown(report)
    assert "| path | < 64 px | 64-224 px | >= 224 px | drift / side (%) |" in text
    assert "| int8 | 3: 0.25 / 2.00 | 3: 0.25 / 2.00 | 0: - / - | 0.60 / 4.50 / 10.00 |" in text
