"""export/weight_rounding.py: im2col against torch's conv, the quadratic error against ONNX Runtime's measured
conv outputs, the rounding's hand properties, and ONNX Runtime's own QDQ graphs re-rounded."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.weight_rounding import (compensated_rounding, conv_patches, input_moments, output_error, round_weights,
                                    weight_range)

ort = pytest.importorskip("onnxruntime")


def _conv_node(**attrs):
    return helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)


@pytest.mark.parametrize("attrs, groups", [({"pads": [1, 0, 2, 1], "strides": [2, 1]}, 1),
                                            ({"pads": [2, 2, 2, 2], "dilations": [2, 2]}, 1),
                                            ({"pads": [1, 1, 1, 1], "group": 4}, 4)])
def test_patches_times_weights_is_torchs_conv(attrs, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 9)).astype(np.float32)
    w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    cols = conv_patches(x, _conv_node(**attrs), (3, 3))  # [N * L, C * 9]
    top, left, bottom, right = attrs["pads"]
    padded = torch.nn.functional.pad(torch.from_numpy(x), (left, right, top, bottom))
    expected = torch.nn.functional.conv2d(padded, torch.from_numpy(w), stride=tuple(attrs.get("strides", [1, 1])),
                                          dilation=tuple(attrs.get("dilations", [1, 1])), groups=groups).numpy()
    d = w[0].size
    per_group = cols.reshape(len(cols), groups, d)
    w_g = w.reshape(groups, 8 // groups, d)
    got = np.einsum("pgd,grd->pgr", per_group, w_g).reshape(len(cols), 8)  # [N * L, C_out]
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1).reshape(-1, 8), atol=1e-4)


def _one_conv(path, w, groups=1, pads=(1, 1, 1, 1)):
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=list(pads), group=groups)],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1] * groups, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return model


def test_quadratic_error_is_the_measured_mean_square_output_error(tmp_path):
    """Reference: ONNX Runtime running the conv with float and with perturbed weights."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    model = _one_conv(tmp_path / "a.onnx", w, groups=2)
    feeds = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(3)]
    h = input_moments(model, [model.graph.node[0]], feeds)["conv"]
    assert h.shape == (2, 18, 18)
    w2 = w + rng.normal(0, 0.05, w.shape).astype(np.float32)
    _one_conv(tmp_path / "b.onnx", w2, groups=2)
    run = {p: ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"]) for p in ("a.onnx", "b.onnx")}
    measured = np.mean([((run["b.onnx"].run(None, f)[0] - run["a.onnx"].run(None, f)[0]) ** 2).sum(axis=1).mean()
                        for f in feeds])
    assert output_error(w.reshape(2, 3, 18), w2.reshape(2, 3, 18), h) == pytest.approx(measured, rel=1e-4)


def test_rounding_by_hand():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (2, 3, 5))
    scale = np.abs(w).max(axis=2) / 127
    zp = np.zeros((2, 3), np.int64)
    nearest = np.clip(np.round(w / scale[..., None]), -127, 127)
    # uncorrelated inputs: nothing to compensate, so round to nearest
    assert np.array_equal(compensated_rounding(w, np.tile(np.eye(5), (2, 1, 1)) * 3.0, scale, zp, -127, 127), nearest)
    # an input that is always zero is rounded to nearest as well, and takes no error from the others
    h = np.tile(np.eye(5), (2, 1, 1))
    h[:, 4, 4] = 0.0
    assert np.array_equal(compensated_rounding(w, h, scale, zp, -127, 127), nearest)
    # two perfectly correlated inputs (x1 = x0): the second weight absorbs the first one's error
    w1 = np.array([[[0.3, 0.3]]])
    q = compensated_rounding(w1, np.ones((1, 2, 2)), np.array([[1.0]]), np.zeros((1, 1), np.int64), -127, 127, damp=1e-9)
    assert q.tolist() == [[[0, 1]]]  # 0 + 1 = 1 ~ 0.6 (round to nearest gives 0 + 0)
    assert weight_range(np.dtype(np.int8), np.zeros(3)) == (-127, 127)
    assert weight_range(np.dtype(np.uint8), np.full(3, 128)) == (0, 255)


def test_correlated_inputs_lose_less_than_round_to_nearest():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 27)) @ rng.standard_normal((27, 27))
    h = (x.T @ x / len(x))[None]
    w = rng.normal(0, 0.1, (1, 16, 27))
    scale = np.abs(w).max(axis=2) / 127
    zp = np.zeros((1, 16), np.int64)
    q = compensated_rounding(w, h, scale, zp, -127, 127)
    assert q.min() >= -127 and q.max() <= 127
    nearest = np.clip(np.round(w / scale[..., None]), -127, 127)
    assert output_error(w, q * scale[..., None], h) < 0.7 * output_error(w, nearest * scale[..., None], h)


def test_onnx_runtime_qdq_graph_re_rounded_moves_its_output_less(tmp_path):
    """On ONNX Runtime's own per-channel QDQ graph: only the INT8 weights change, and the conv's output
    on the calibration inputs moves less from FP32 (ONNX Runtime measures both)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    fp32 = _one_conv(tmp_path / "fp32.onnx", w)
    base = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    feeds = [{"x": (base + 0.3 * rng.standard_normal((1, 4, 8, 8))).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(tmp_path / "fp32.onnx"), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    nearest = onnx.load(str(tmp_path / "q.onnx"))
    rerounded = onnx.load(str(tmp_path / "q.onnx"))
    summary = round_weights(rerounded, fp32, feeds)
    assert summary.convs == 1 and summary.error_ratio < 1.0
    old = {i.name: numpy_helper.to_array(i) for i in nearest.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in rerounded.graph.initializer}
    changed = [k for k in old if not np.array_equal(old[k], new[k])]
    assert len(changed) == 1 and new[changed[0]].dtype == np.int8 and np.abs(new[changed[0]]).max() <= 127
    onnx.save(rerounded, str(tmp_path / "r.onnx"))

    def error(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(str(tmp_path / "fp32.onnx"), providers=["CPUExecutionProvider"])
        return np.mean([((s.run(None, f)[0] - ref.run(None, f)[0]) ** 2).mean() for f in feeds])

    assert error(tmp_path / "r.onnx") < error(tmp_path / "q.onnx")
