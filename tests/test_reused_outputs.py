"""Detector outputs into arrays the runtime keeps (maskface.runtimes.reused_outputs): the same values as a
plain run, the arrays overwritten by the next call and by nothing else, and a pipeline whose results
never alias them. References: numpy on a hand-built graph, ONNX Runtime's own run(), and each
pipeline's result on a runtime without the transient call."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime, ort_session  # noqa: E402
from maskface.runtimes.reused_outputs import ReusedOutputs  # noqa: E402


@pytest.fixture(scope="module")
def affine_session(tmp_path_factory):
    """y = 2x + 1 and z = x - 3, for any [N, C] input: values numpy can check."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c"])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "c"]) for name in ("y", "z")]
    nodes = [helper.make_node("Mul", ["x", "two"], ["twice"]), helper.make_node("Add", ["twice", "one"], ["y"]),
             helper.make_node("Sub", ["x", "three"], ["z"])]
    constants = [helper.make_tensor(name, TensorProto.FLOAT, [], [v]) for name, v in
                 (("two", 2.0), ("one", 1.0), ("three", 3.0))]
    model = helper.make_model(helper.make_graph(nodes, "affine", [x], outputs, constants),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("reused") / "affine.onnx"
    onnx.save(model, str(path))
    return ort_session(path, threads=1)


def feeds(seed: int, shape=(2, 3)) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def test_values_match_numpy_and_the_next_call_overwrites_the_same_arrays(affine_session):
    reused = ReusedOutputs(affine_session)
    a = feeds(0)
    y, z = reused.run_transient(None, a)
    np.testing.assert_allclose(y, 2 * a["x"] + 1, rtol=1e-6)
    np.testing.assert_allclose(z, a["x"] - 3, rtol=1e-6)
    b = feeds(1)
    y2, z2 = reused.run_transient(None, b)  # the bound path (the first call ran session.run)
    assert y2 is y and z2 is z
    np.testing.assert_allclose(y, 2 * b["x"] + 1, rtol=1e-6)
    np.testing.assert_allclose(z, b["x"] - 3, rtol=1e-6)
    c = feeds(2)
    (only_z,) = reused.run_transient(["z"], c)
    assert only_z is z
    np.testing.assert_allclose(only_z, c["x"] - 3, rtol=1e-6)


def test_other_shapes_and_other_threads_get_their_own_arrays(affine_session):
    reused = ReusedOutputs(affine_session, max_shapes=3)
    a = feeds(0)
    y_a, _ = reused.run_transient(None, a)
    wide = feeds(1, (2, 5))
    y_wide, _ = reused.run_transient(None, wide)
    assert y_wide.shape == (2, 5) and y_wide is not y_a
    np.testing.assert_allclose(y_a, 2 * a["x"] + 1, rtol=1e-6)  # untouched by the other shape

    other: dict[str, np.ndarray] = {}
    thread = threading.Thread(target=lambda: other.update(y=reused.run_transient(None, feeds(5))[0]))
    thread.start()
    thread.join()
    assert other["y"] is not y_a
    np.testing.assert_allclose(y_a, 2 * a["x"] + 1, rtol=1e-6)  # untouched by the other thread


def test_at_most_max_shapes_sets_are_kept(affine_session):
    reused = ReusedOutputs(affine_session, max_shapes=2)
    first = reused.run_transient(None, feeds(0, (1, 2)))[0]
    reused.run_transient(None, feeds(1, (1, 3)))
    reused.run_transient(None, feeds(2, (1, 4)))  # drops the (1, 2) set
    assert len(reused._sets) == 2
    again = reused.run_transient(None, feeds(3, (1, 2)))[0]
    assert again is not first  # a new set, and `first` keeps its values: it is no longer written
    np.testing.assert_allclose(first, 2 * feeds(0, (1, 2))["x"] + 1, rtol=1e-6)


class DetectOnly:
    """A runtime without detect_transient: the pipeline's reference."""

    def __init__(self, runtime):
        self.runtime = runtime

    def detect(self, images):
        return self.runtime.detect(images)

    def select(self, scores, boxes, inference):
        return self.runtime.select(scores, boxes, inference)

    def keypoints(self, features, rois):
        return self.runtime.keypoints(features, rois)


def test_detect_transient_equals_detect_on_the_exported_detector(tiny_graphs):
    _, folder = tiny_graphs
    runtime = OrtRuntime(folder / "detector.onnx", folder / "keypoint_head_portable.onnx", threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 192)).astype(np.float32)
    want = runtime.detect(x)
    got = runtime.detect_transient(x)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert np.array_equal(g, w)


def pipelines(model, runtime):
    # every candidate up to max_detections (threshold 0): faces to compare even with seeded weights
    inference = dataclasses.replace(model.cfg.inference, score_threshold=0.0)
    return (OnnxPredictor(runtime, inference, model.cfg.input, max_side=None),
            OnnxPredictor(DetectOnly(runtime), inference, model.cfg.input, max_side=None))


def assert_same_faces(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def test_pipeline_results_equal_the_copying_path_and_outlive_the_next_call(tiny_graphs):
    model, folder = tiny_graphs
    runtime = OrtRuntime(folder / "detector.onnx", folder / "keypoint_head_portable.onnx", threads=1)
    transient, copying = pipelines(model, runtime)
    rng = np.random.default_rng(7)
    first_image, second_image = (rng.integers(0, 255, (128, 192, 3), dtype=np.uint8) for _ in range(2))
    first = transient(first_image)
    kept = {k: v.copy() for k, v in first.items()}
    assert len(first["scores"]) > 0
    second = transient(second_image)  # same shape: the detector writes into the same arrays
    assert_same_faces(first, kept)  # nothing in a result is a view of them
    assert_same_faces(first, copying(first_image))
    assert_same_faces(second, copying(second_image))


def test_openvino_run_transient_views_and_run_copies(tiny_graphs):
    pytest.importorskip("openvino")
    from maskface.runtimes.openvino_runtime import OpenVinoGraph

    _, folder = tiny_graphs
    graph = OpenVinoGraph(folder / "detector.onnx", "f32", threads=1, static_shapes=True)
    a, b = (np.random.default_rng(s).standard_normal((1, 3, 128, 192)).astype(np.float32) for s in (0, 1))
    copied = graph.run(None, {"images": a})
    views = graph.run_transient(None, {"images": a})
    for v, c in zip(views, copied):
        assert np.array_equal(v, c)
    graph.run_transient(None, {"images": b})
    assert not np.array_equal(views[2], copied[2])  # the request's memory: written by the next call
    again = graph.run(None, {"images": a})
    for g, c in zip(again, copied):
        assert np.array_equal(g, c)  # run()'s arrays are the caller's


def test_served_pipeline_stage_reads_the_same_outputs_transiently(tiny_graphs):
    from maskface.serving.fused_stage import StageGraphs
    from maskface.serving.stages import OnnxModel

    _, folder = tiny_graphs
    graphs = StageGraphs(OnnxModel(folder / "detector.onnx", 1), OnnxModel(folder / "keypoint_head_portable.onnx", 1))
    x = np.random.default_rng(3).standard_normal((1, 3, 128, 192)).astype(np.float32)
    want = graphs.detect(x)
    got = graphs.detect_transient(x)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert np.array_equal(g, w)
    assert graphs.detect_transient(x)[2][0] is got[2][0]
