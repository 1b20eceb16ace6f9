"""export/equalize.py on small hand-built ONNX graphs, run by ONNX Runtime (the reference ops).

Equalisation must leave the FP32 function unchanged, bring the channels of a depthwise conv's input to
one range (dense: one activation / weight ratio), never touch chains it cannot rescale exactly (Clip,
shared tensors), and make per-tensor INT8 activations closer to FP32 on an unbalanced graph.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.equalize import equalisation_scales, equalize_graph, find_pairs

C = 8  # channels of the first conv


def _conv(name, x, w, b, out, group=1, pad=1):
    return helper.make_node("Conv", [x, w, b], [out], name=name, group=group, pads=[pad] * 4)


def unbalanced_graph(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> A (3x3, C out, channel i scaled by 10^(-2.5 i / (C-1)), channel C-1 dead) -> Relu
    -> B (depthwise 3x3) -> Relu -> D (1x1 dense, 4 out) -> y;
    beside it, x -> E -> Clip -> F (not homogeneous) and x -> G -> Relu -> {H, y2} (two consumers)."""
    spread = 10.0 ** np.linspace(0, -2.5, C)
    wa = rng.normal(0, 0.3, (C, 3, 3, 3)) * spread[:, None, None, None]
    ba = rng.normal(0, 0.1, C) * spread
    wa[C - 1], ba[C - 1] = 0.0, -1.0  # never fires: its scale must stay 1
    inits = {
        "wa": wa, "ba": ba,
        "wb": rng.normal(0, 0.5, (C, 1, 3, 3)), "bb": rng.normal(0, 0.1, C),
        "wd": rng.normal(0, 0.5, (4, C, 1, 1)), "bd": rng.normal(0, 0.1, 4),
        "we": rng.normal(0, 0.3, (C, 3, 3, 3)), "be": np.zeros(C),
        "wf": rng.normal(0, 0.5, (4, C, 1, 1)), "bf": np.zeros(4),
        "wg": rng.normal(0, 0.3, (C, 3, 3, 3)), "bg": np.zeros(C),
        "wh": rng.normal(0, 0.5, (4, C, 1, 1)), "bh": np.zeros(4),
        "lo": np.array(0.0), "hi": np.array(6.0),
    }
    nodes = [
        _conv("A", "x", "wa", "ba", "a"), helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        _conv("B", "ra", "wb", "bb", "b", group=C), helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        _conv("D", "rb", "wd", "bd", "y", pad=0),
        _conv("E", "x", "we", "be", "e"), helper.make_node("Clip", ["e", "lo", "hi"], ["ce"], name="clip_e"),
        _conv("F", "ce", "wf", "bf", "y_clip", pad=0),
        _conv("G", "x", "wg", "bg", "g"), helper.make_node("Relu", ["g"], ["rg"], name="relu_g"),
        _conv("H", "rg", "wh", "bh", "y_shared", pad=0), helper.make_node("Neg", ["rg"], ["y_relu"], name="neg_g"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, None, None]) for n in ("y", "y_clip", "y_shared", "y_relu")]
    graph = helper.make_graph(nodes, "unbalanced", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outputs, [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def feeds(rng: np.random.Generator, n: int) -> list[dict]:
    return [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def run(path, feed, outputs=None):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(outputs, feed)


def with_outputs(path, names, out_path):
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    onnx.save(model, str(out_path))
    return out_path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equalize")
    original = tmp / "original.onnx"
    onnx.save(unbalanced_graph(np.random.default_rng(0)), str(original))
    calibration = feeds(np.random.default_rng(1), 4)
    summary = equalize_graph(original, tmp / "equalized.onnx", calibration)
    return tmp, original, tmp / "equalized.onnx", calibration, summary


def test_scales_by_hand():
    # depthwise: every live channel up to the widest range; a dead one keeps 1
    np.testing.assert_allclose(equalisation_scales(np.array([4.0, 1.0, 0.0]), None, depthwise=True), [1, 0.25, 1])
    # the gain is bounded: 1000x apart, max_gain 100 -> s = 1 / 100
    np.testing.assert_allclose(equalisation_scales(np.array([1000.0, 1.0]), None, True, max_gain=100), [1, 0.01])
    # dense: sqrt(r / w) = sqrt([4/1, 1/4]) = [2, 0.5], normalised by its max -> [1, 0.25]
    w = np.zeros((2, 2, 1, 1))
    w[0, :, 0, 0] = [1.0, -4.0]  # column ranges |w| = [1, 4]
    np.testing.assert_allclose(equalisation_scales(np.array([4.0, 1.0]), w, depthwise=False), [1, 0.25])
    with pytest.raises(ValueError, match="max_gain"):
        equalize_graph("unused.onnx", "unused_out.onnx", [], max_gain=0.5)


def test_only_exactly_rescalable_chains_are_found(graphs):
    _, original, _, _, summary = graphs
    pairs = {(p.first, p.second): p.depthwise for p in find_pairs(onnx.load(str(original)))}
    # E -> Clip -> F: clip(x / s) != clip(x) / s; G -> Relu -> {H, Neg}: two consumers
    assert pairs == {("A", "B"): True, ("B", "D"): False}
    assert (summary.pairs, summary.channels) == (2, 2 * C)


def test_fp32_function_is_unchanged(graphs):
    _, original, equalized, _, _ = graphs
    for feed in feeds(np.random.default_rng(2), 3):  # not the calibration inputs
        for a, b in zip(run(original, feed), run(equalized, feed)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_untouched_chains_keep_their_weights(graphs):
    _, original, equalized, _, _ = graphs
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(original)).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(equalized)).graph.initializer}
    for name in ("we", "be", "wf", "wg", "bg", "wh"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.array_equal(after["wa"], before["wa"])


def test_ranges_are_balanced(graphs):
    tmp, original, equalized, calibration, _ = graphs
    probe = {name: with_outputs(path, ["ra", "rb"], tmp / f"{name}_probe.onnx")
             for name, path in (("original", original), ("equalized", equalized))}

    def ranges(path):
        peaks = [run(path, f, ["ra", "rb"]) for f in calibration]
        return [np.max([p[k].max(axis=(0, 2, 3)) for p in peaks], axis=0) for k in range(2)]

    (ra0, rb0), (ra1, rb1) = ranges(probe["original"]), ranges(probe["equalized"])
    live = ra0 > 0
    assert not live[C - 1] and live[:C - 1].all()
    spread_before = ra0[live].max() / ra0[live].min()
    assert spread_before > 100  # the graph is unbalanced enough for the clip to matter
    # depthwise consumer: s = r / max r clipped at 1/100, r' = r / s: the widest range, or 100 r where clipped
    relative = ra0[live] / ra0[live].max()
    expected = np.where(relative >= 0.01, ra0[live].max(), ra0[live] * 100)
    np.testing.assert_allclose(ra1[live], expected, rtol=1e-4)
    assert ra1[C - 1] == 0
    # dense consumer: activation range / weight column range is the same for every live channel
    wd = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(equalized)).graph.initializer}["wd"]
    ratio = rb1 / np.abs(wd).max(axis=(0, 2, 3))
    alive_b = rb1 > 0
    np.testing.assert_allclose(ratio[alive_b], ratio[alive_b].max(), rtol=1e-4)


def test_int8_error_drops_on_an_unbalanced_graph(graphs):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from maskface.runtimes.ort_runtime import ort_session

    tmp, original, equalized, calibration, _ = graphs

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    # On the calibration inputs MinMax ranges hold every value: no clipping, only rounding, which is what
    # equalisation improves (on fresh noise inputs clipping can dominate: quantize_int8's module doc).
    test = calibration
    errors = {}
    for name, path in (("original", original), ("equalized", equalized)):
        q = tmp / f"{name}_int8.onnx"
        quantize_static(str(path), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Relu"])
        # The QDQ graph's own semantics (Quantize / Dequantize / Conv, no fused kernel): on a CPU without VNNI
        # the fused conv's int16 sums saturate (test_int8_weight_range); on an AVX2 EPYC both graphs were
        # 0.158 off there, 10x the rounding measured here (0.015 / 0.010), which says nothing of equalisation.
        int8 = ort_session(q, optimize=False)
        errors[name] = np.mean([np.abs(int8.run(["y"], f)[0] - run(path, f, ["y"])[0]).max() for f in test])
    assert errors["equalized"] < 0.8 * errors["original"], errors


def test_demo_detector_keeps_its_function(tmp_path):
    """On the real architecture (demo preset: MobileNetV2 with ReLU, BatchNorm folded by prepare_graph):
    the chains are found and the exported detector computes the same maps after equalisation."""
    import torch

    from export.export_onnx import export_detector
    from export.quantize_int8 import prepare_graph
    from maskface import build_model

    torch.manual_seed(0)
    prepared = prepare_graph(export_detector(build_model("demo").eval(), tmp_path / "detector.onnx"),
                             tmp_path / "prepared.onnx")
    rng = np.random.default_rng(0)
    images = [{"images": rng.normal(0, 1, (1, 3, 128, 160)).astype(np.float32)} for _ in range(3)]
    summary = equalize_graph(prepared, tmp_path / "equalized.onnx", images[:2])
    assert summary.pairs == 34  # 17 (stem or expand conv) -> depthwise, 17 depthwise -> project
    assert summary.max_gain > 1
    names = [o.name for o in onnx.load(str(prepared)).graph.output]
    before, after = run(prepared, images[2]), run(tmp_path / "equalized.onnx", images[2])
    for name, a, b in zip(names, before, after):
        if name.startswith("m"):  # the context maps the keypoint head reads
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max(), err_msg=name)
    np.testing.assert_allclose(np.sort(after[0].ravel()), np.sort(before[0].ravel()), atol=1e-5)  # scores
