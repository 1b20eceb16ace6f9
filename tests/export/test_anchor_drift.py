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
