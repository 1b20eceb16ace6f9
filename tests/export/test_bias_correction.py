"""export/bias_correction.py: the rounding offset by hand, and on ONNX Runtime's own QDQ graphs the
corrected convs (dense, grouped, one without a bias; sharing one input) give the FP32 output for
inputs the INT8 grid holds exactly."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.bias_correction import correct_biases, dequantize, rounding_offset

ort = pytest.importorskip("onnxruntime")


def test_rounding_offset_by_hand_dense_and_grouped():
    w = np.zeros((2, 2, 1, 1), np.float32)
    wq = w.copy()
    wq[0, 0, 0, 0], wq[0, 1, 0, 0], wq[1, 1, 0, 0] = 0.01, -0.02, 0.03
    means = np.array([2.0, 5.0])
    # channel 0: 0.01 * 2 - 0.02 * 5 = -0.08; channel 1: 0.03 * 5 = 0.15
    assert rounding_offset(w, wq, means, groups=1) == pytest.approx([-0.08, 0.15])

    # 4 outputs in 2 groups of 2 input channels each; a 3x3 kernel's errors add up over its taps
    w = np.zeros((4, 2, 3, 3), np.float32)
    wq = w.copy()
    wq[0, 1, 0, 0] = wq[0, 1, 2, 2] = 0.5      # output 0 (group 0) reads input channel 1 twice
    wq[3, 0, 1, 1] = -1.0                     # output 3 (group 1) reads input channel 2
    means = np.array([1.0, 2.0, 3.0, 4.0])
    assert rounding_offset(w, wq, means, groups=2) == pytest.approx([2.0, 0.0, 0.0, -3.0])
    with pytest.raises(ValueError, match="does not fit"):
        rounding_offset(w, wq, np.ones(3), groups=2)


def test_dequantize_per_axis():
    q = np.array([[1, -2], [3, 4]], np.int8)
    np.testing.assert_allclose(dequantize(q, np.array([0.5, 2.0]), None, axis=0), [[0.5, -1.0], [6.0, 8.0]])
    assert dequantize(np.array([10, 20], np.uint8), np.float32(0.1), np.uint8(10), axis=1) == pytest.approx([0, 1])


def _graph(path, rng):
    """x [1, 4, 6, 6] -> Conv A (dense 3x3, 4 -> 3), Conv B (1x1, 2 groups, 4 -> 4) and Conv C (1x1,
    4 -> 2, no bias), all graph outputs; the three share their input."""
    wa = rng.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32)
    wb = rng.normal(0, 0.3, (4, 2, 1, 1)).astype(np.float32)
    wc = rng.normal(0, 0.3, (2, 4, 1, 1)).astype(np.float32)
    ba, bb = rng.normal(0, 1, 3).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((wa, "wa"), (ba, "ba"), (wb, "wb"), (bb, "bb"), (wc, "wc"))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="conv_b", group=2),
             helper.make_node("Conv", ["x", "wc"], ["c"], name="conv_c")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abc"], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return {"wa": wa, "ba": ba, "wb": wb, "bb": bb, "wc": wc}


def _quantise(fp32_path, out_path, calibration, exclude=()):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x} for x in calibration])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude))
    return onnx.load(str(out_path))


def _input_grid(model):
    """scale and zero point of the input x's QuantizeLinear."""
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(values[q.input[1]]), int(values[q.input[2]])


def _run(model, x):
    """The two convs' outputs before the output QuantizeLinear (its rounding is not the bias's business)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [n.output[0] for n in probe.graph.node if n.op_type == "Conv"]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {"x": x})


def test_corrected_convs_give_the_fp32_output_on_exactly_representable_inputs(tmp_path):
    rng = np.random.default_rng(0)
    weights = _graph(tmp_path / "fp32.onnx", rng)
    calibration = [rng.uniform(0, 8, (1, 4, 6, 6)).astype(np.float32) for _ in range(4)]
    quantised = _quantise(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    scale, zero = _input_grid(quantised)
    levels = np.array([200, 90, 140, 255]) - zero            # channel means far from 0, on the INT8 grid
    m = (scale * levels).astype(np.float32)
    x = np.broadcast_to(m.reshape(1, 4, 1, 1), (1, 4, 6, 6)).copy()
    # FP32 by hand at an interior pixel (the 3x3 conv's border sees zero padding): W . m + b
    want_a = np.einsum("oikl,i->o", weights["wa"], m) + weights["ba"]
    want_b = np.concatenate([weights["wb"][:2, :, 0, 0] @ m[:2], weights["wb"][2:, :, 0, 0] @ m[2:]]) + weights["bb"]
    want_c = weights["wc"][:, :, 0, 0] @ m

    before = [o[0, :, 3, 3] for o in _run(quantised, x)]
    summary = correct_biases(quantised, onnx.load(str(tmp_path / "fp32.onnx")), [{"x": x}])
    onnx.checker.check_model(quantised)
    after = [o[0, :, 3, 3] for o in _run(quantised, x)]

    assert summary.convs == 3 and summary.biases_added == 1 and summary.max_offset > 0
    # each bias is INT32 with step scale_x * scale_w: that rounding is all that may remain
    bias_step = scale * max(np.abs(weights[w]).max() for w in ("wa", "wb", "wc")) / 127
    for got, was, want in zip(after, before, (want_a, want_b, want_c)):
        assert np.abs(got - want).max() <= bias_step
        assert np.abs(was - want).max() > 5 * bias_step     # the uncorrected graph was off: the test can fail


def test_convs_left_in_fp32_are_not_touched(tmp_path):
    rng = np.random.default_rng(1)
    _graph(tmp_path / "fp32.onnx", rng)
    calibration = [rng.uniform(0, 8, (1, 4, 6, 6)).astype(np.float32) for _ in range(2)]
    quantised = _quantise(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration, exclude=["conv_b"])
    before = {i.name: i.SerializeToString() for i in quantised.graph.initializer}
    summary = correct_biases(quantised, onnx.load(str(tmp_path / "fp32.onnx")), [{"x": x} for x in calibration])
    after = {i.name: i.SerializeToString() for i in quantised.graph.initializer}
    assert summary.convs == 2 and summary.biases_added == 1          # conv_a, and conv_c which gets a bias
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"ba_quantized"}                              # conv_a's INT32 bias only ...
    assert len(after) == len(before) + 3                            # ... and conv_c's new bias, scale, zero point
    assert after["bb"] == before["bb"] and after["wb"] == before["wb"]
