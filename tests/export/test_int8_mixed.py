"""export/int8_mixed.py: activations kept in FP32 are exactly un-quantised, conv work is counted as by hand,
the ranking orders drift per GFLOP, and the sensitivity finds a planted coarse activation and resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from export import int8_mixed  # noqa: E402


def _session(model, optimize: bool = True):
    from maskface.runtimes.ort_runtime import ort_session

    return ort_session(model.SerializeToString(), 1, optimize=optimize, quiet=True)


def _image(shape=(1, 3, 128, 160)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def int8_model(tiny_int8):
    import onnx

    return onnx.load(str(tiny_int8.build.detector_int8))


def _uint8_range(model, quantize_node) -> tuple[float, float]:
    """By hand: a UINT8 quantiser with scale s and zero point z gives back (0 - z) s .. (255 - z) s."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scale, zero = float(inits[quantize_node.input[1]]), int(inits[quantize_node.input[2]])
    assert inits[quantize_node.input[2]].dtype == np.uint8
    return -zero * scale, (255 - zero) * scale


def _clipped_pairs(model, tensors):
    """Reference construction: the pairs on `tensors` edited in place (no rewiring): each Quantize becomes
    an Identity, each Dequantize a Clip to the quantiser's range computed by hand."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    quantised = {n.output[0]: n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in tensors}
    for node in out.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in quantised:
            lo, hi = _uint8_range(model, quantised[node.input[0]])
            names = [f"ref/{node.name}/lo", f"ref/{node.name}/hi"]
            out.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in zip(names, (lo, hi)))
            node.op_type, node.domain = "Clip", ""
            node.input[1:] = names
            del node.attribute[:]
    for node in quantised.values():
        node.op_type, node.domain = "Identity", ""
        del node.input[1:]
        del node.attribute[:]
    return out


def test_activations_are_the_quantize_nodes_on_non_constant_tensors(int8_model):
    acts = int8_mixed.activations(int8_model)
    constants = {i.name for i in int8_model.graph.initializer}
    expected = [n.input[0] for n in int8_model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in constants]
    assert [a.tensor for a in acts] == expected and "images" in expected  # the graph input is quantised too
    assert all(a.readers for a in acts)


@pytest.mark.parametrize("which", ["all", "some"])
def test_kept_activations_compute_what_clipped_pairs_compute(int8_model, which):
    tensors = [a.tensor for a in int8_mixed.activations(int8_model, hw=None)]
    if which == "some":
        tensors = tensors[::7]
    mixed = int8_mixed.keep_fp32(int8_model, tensors)
    reference = _clipped_pairs(int8_model, set(tensors))
    x = _image()
    for a, b in zip(_session(mixed, optimize=False).run(None, {"images": x}),
                    _session(reference, optimize=False).run(None, {"images": x})):
        np.testing.assert_array_equal(a, b)
    left = {n.input[0] for n in mixed.graph.node if n.op_type == "QuantizeLinear"}
    assert not left & set(tensors)
    used = {i for n in mixed.graph.node for i in n.input}
    assert all(i.name in used for i in mixed.graph.initializer)  # the pairs' scales went with them
    if which == "all":  # weights only: no activation is rounded, so the output differs from the INT8 graph's
        full = _session(int8_model, optimize=False).run(None, {"images": x})
        got = _session(mixed, optimize=False).run(None, {"images": x})
        assert np.abs(full[2] - got[2]).max() > 1e-3


def test_a_kept_activation_reaches_its_readers_clamped_not_rounded(int8_model):
    """In the INT8 graph the reader of a pair gets (clip(round(t / s) + z, 0, 255) - z) s; kept in FP32 it
    gets clip(t, -z s, (255 - z) s): ONNX's QuantizeLinear / DequantizeLinear and the range, by hand."""
    import onnx

    act = next(a for a in int8_mixed.activations(int8_model, hw=None)[1:] if "Add" in a.tensor)  # signed: z > 0
    q = next(n for n in int8_model.graph.node if n.name == act.quantize)
    dq_out = next(n.output[0] for n in int8_model.graph.node if n.name == act.dequantize[0])
    lo, hi = _uint8_range(int8_model, q)
    scale = (hi - lo) / 255

    def probe(model, names):
        model = onnx.load_from_string(model.SerializeToString())
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
        return dict(zip(names, _session(model, optimize=False).run(names, {"images": _image()})))

    full = probe(int8_model, [act.tensor, dq_out])
    t = full[act.tensor]
    assert t.min() < lo + scale or t.max() > hi - scale  # the range is reached: the clamp is exercised
    np.testing.assert_allclose(full[dq_out], (np.clip(np.round((t - lo) / scale), 0, 255)) * scale + lo, atol=1e-5)
    mixed = probe(int8_mixed.keep_fp32(int8_model, [act.tensor]), [act.tensor, dq_out])
    np.testing.assert_allclose(mixed[dq_out], np.clip(mixed[act.tensor], lo, hi), rtol=0, atol=1e-6)
    assert np.abs(mixed[dq_out] - full[dq_out]).max() > 1e-4  # unrounded


def test_unknown_tensors_are_refused(int8_model):
    with pytest.raises(KeyError, match="not quantised activations"):
        int8_mixed.keep_fp32(int8_model, ["no such tensor"])


def test_conv_gflops_by_hand():
    """A 3x3 stride-2 conv 3 -> 8 and a depthwise 3x3 (group 8) on [1, 3, 480, 640], the first through a
    DequantizeLinear of INT8 weights as in a QDQ graph: 2 x multiply-adds counted by hand."""
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.int8), "w1_q")
    s1 = numpy_helper.from_array(np.float32(0.1), "w1_s")
    z1 = numpy_helper.from_array(np.int8(0), "w1_z")
    w2 = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w2")
    nodes = [helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], name="dq"),
             helper.make_node("Conv", ["images", "w1"], ["a"], name="stem", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="dw", group=8, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                         ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [w1, s1, z1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = int8_mixed.conv_gflops(model, (480, 640))
    assert got["stem"] == pytest.approx(2 * 8 * 240 * 320 * 3 * 9 / 1e9)
    assert got["dw"] == pytest.approx(2 * 8 * 240 * 320 * 1 * 9 / 1e9)


def test_ranking_is_drift_per_gflop_above_noise():
    acts = [int8_mixed.Activation(t, "", [], [], c) for t, c in
            (("a", 1.0), ("b", 0.1), ("c", 0.0), ("d", 2.0), ("e", 0.0))]
    sensitivity = {"a": 1.0, "b": 0.5, "c": 0.01, "d": -0.2, "e": 0.06}
    # per GFLOP: b 5.0, a 1.0; e (0.06, no conv reads it) 60 on the 1e-3 floor; c is noise, d lowers drift
    assert int8_mixed.ranked(sensitivity, acts, noise=0.05) == ["e", "b", "a"]


@pytest.fixture(scope="module")
def anchors_reference(tiny_int8):
    """FP32's anchors on two synthetic images (every candidate passes the threshold)."""
    import onnx

    from export.anchor_drift import expose_anchor_indices
    from maskface.config import InferenceConfig
    from maskface.runtimes.ort_runtime import OrtRuntime

    fp32_model = expose_anchor_indices(onnx.load(str(tiny_int8.build.detector)))
    fp32 = OrtRuntime(fp32_model.SerializeToString(), tiny_int8.build.keypoint_head, threads=1)
    refs = int8_mixed.references(fp32, tiny_int8.records[:2], tiny_int8.model.cfg.input,
                                 InferenceConfig(score_threshold=0.0, max_detections=8), max_side=None, progress=False)
    return fp32, refs


def test_drift_at_anchors_is_zero_for_fp32_itself_and_not_for_int8(tiny_int8, int8_model, anchors_reference):
    from export.anchor_drift import expose_anchor_indices
    from maskface.runtimes.ort_runtime import OrtRuntime

    fp32, refs = anchors_reference
    kept = sum(len(r.kept) for r in refs)
    itself = int8_mixed.drift_at_anchors(fp32, fp32, refs)
    assert len(itself["box_px"]) == kept and max(itself["box_px"]) == 0 and max(itself["landmark_px"]) == 0
    int8 = OrtRuntime(expose_anchor_indices(int8_model).SerializeToString(), tiny_int8.build.keypoint_head, 1)
    drift = int8_mixed.drift_at_anchors(int8, fp32, refs)
    assert len(drift["box_px"]) + drift["missing"] == kept and int8_mixed.mean_square(drift) > 0


def test_mean_square_leaves_out_each_kinds_samples_above_its_99th_percentile():
    """By hand: 100 box drifts of 1 px and one of 30 px keep ceil(0.99 x 101) = 100 samples, the 1 px ones
    (mean square 1); landmarks 3 x 2 px keep ceil(2.97) = 3 (mean square 4); a single sample is kept."""
    drift = {"box_px": [1.0] * 50 + [30.0] + [1.0] * 50, "landmark_px": [2.0, 2.0, 2.0], "missing": 0}
    assert int8_mixed.mean_square(drift) == pytest.approx(1.0 + 4.0)
    assert int8_mixed.mean_square(drift, share=1.0) == pytest.approx((100 + 900) / 101 + 4.0)
    assert int8_mixed.mean_square({"box_px": [3.0], "landmark_px": [], "missing": 0}) == pytest.approx(9.0)


def test_sensitivity_is_each_activations_own_growth_and_resumes(int8_model, tmp_path, monkeypatch):
    """With a drift whose mean square is the sum of planted weights of the activations still quantised, each
    activation's sensitivity is exactly its weight. A stopped run goes on from its saved state (a value
    already there is not measured again); a state of another graph starts afresh."""
    import onnx

    import maskface.runtimes.ort_runtime as ort_runtime

    tensors = [a.tensor for a in int8_mixed.activations(int8_model, hw=None)]
    weight = {t: float(i % 7) for i, t in enumerate(tensors)}
    calls = []

    class Recorded:
        def __init__(self, detector, keypoint_head, threads=None):
            self.model = onnx.load_from_string(detector)

    def planted_drift(runtime, fp32, refs):
        quantised = {n.input[0] for n in runtime.model.graph.node if n.op_type == "QuantizeLinear"} & set(tensors)
        calls.append(quantised)
        return {"box_px": [np.sqrt(sum(weight[t] for t in quantised) + 2.0)], "landmark_px": [], "missing": 0}

    monkeypatch.setattr(ort_runtime, "OrtRuntime", Recorded)
    monkeypatch.setattr(int8_mixed, "drift_at_anchors", planted_drift)
    state_path = tmp_path / "sensitivity.json"
    state_path.write_text(json.dumps({"fingerprint": "f", "per_activation": {tensors[0]: 123.0}}))
    state = int8_mixed.measure_sensitivity(int8_model, None, None, [], state_path, "f", progress=False)
    assert state["base"] == pytest.approx(2.0) and calls[0] == set()
    assert state["full"] == pytest.approx(2.0 + sum(weight.values())) and calls[1] == set(tensors)
    assert state["per_activation"][tensors[0]] == 123.0 and len(calls) == len(tensors) + 1
    for t in tensors[1:]:
        assert state["per_activation"][t] == pytest.approx(weight[t])
    assert json.loads(state_path.read_text()) == state
    calls.clear()
    again = int8_mixed.measure_sensitivity(int8_model, None, None, [], state_path, "other", progress=False)
    assert len(calls) == len(tensors) + 2 and again["per_activation"][tensors[0]] == pytest.approx(weight[tensors[0]])


def test_cli_refuses_bad_settings(tmp_path):
    with pytest.raises(SystemExit):
        int8_mixed.parse_args(["--int8-dir", str(tmp_path), "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        int8_mixed.parse_args(["--keep", "a,b"])
    with pytest.raises(SystemExit):
        int8_mixed.parse_args(["--images", "0"])
