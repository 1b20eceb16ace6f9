"""export/int8_error_sources.py: each variant of a hand-built QDQ graph computes what numpy says it should,
and on quantize_int8's own graph the variants leave no activation rounded."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from export.int8_error_sources import VARIANTS, variant_graph  # noqa: E402

SIGNED = (0.1, 128)  # scale, uint8 zero point: the input's range -12.8 .. 12.7
UNSIGNED = (0.05, 0)  # the conv output's range 0 .. 12.75: the quantiser folded a Relu into it
W_SCALE = 0.02


def qdq_graph() -> tuple[onnx.ModelProto, np.ndarray]:
    """x [1, 2, 3, 3] -> Q/DQ (signed) -> 1x1 Conv, INT8 weights -> Q/DQ (from 0) -> y; and the weights."""
    w_int = np.array([[[[50]], [[-30]]], [[[-100]], [[20]]], [[[7]], [[64]]]], np.int8)  # [3, 2, 1, 1]
    inits = [numpy_helper.from_array(w_int, "w_q"), numpy_helper.from_array(np.float32(W_SCALE), "w_scale"),
             numpy_helper.from_array(np.int8(0), "w_zero")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_dq")]
    for name, (scale, zero), src, dst in (("x", SIGNED, "x", "x_dq"), ("c", UNSIGNED, "c", "y")):
        inits += [numpy_helper.from_array(np.float32(scale), f"{name}_scale"),
                  numpy_helper.from_array(np.uint8(zero), f"{name}_zero")]
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{name}_scale", f"{name}_zero"], [f"{name}_q"],
                                      name=f"{name}_quantize"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"], [dst],
                                      name=f"{name}_dequantize"))
        if name == "x":
            nodes.append(helper.make_node("Conv", ["x_dq", "w"], ["c"], name="conv"))
    return hand_model(nodes, inits, "qdq", [1, 3, 3, 3]), w_int.astype(np.float32) * W_SCALE


def hand_model(nodes, inits, name, y_shape):
    """The opset-17 model of a hand graph from x [1, 2, 3, 3] to y."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_each_variant_computes_what_numpy_says():
    model, w = qdq_graph()
    # values beyond both ranges: x up to +-20 (clipped at -12.8 / 12.7), the conv's output up to ~20 (at 12.75)
    x = np.random.default_rng(0).uniform(-20, 20, (1, 2, 3, 3)).astype(np.float32)

    def conv(v):
        return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], v)

    x_lo, x_hi = -128 * SIGNED[0], 127 * SIGNED[0]
    c_hi = 255 * UNSIGNED[0]
    expected = {
        "weights": np.maximum(conv(x), 0),
        "weights+clip-unsigned": np.clip(conv(x), 0, c_hi),
        "weights+clip-signed": np.maximum(conv(np.clip(x, x_lo, x_hi)), 0),
        "weights+clip": np.clip(conv(np.clip(x, x_lo, x_hi)), 0, c_hi),
    }
    assert np.abs(conv(x)).max() > c_hi and np.abs(x).max() > x_hi  # both clips bite
    for variant, want in expected.items():
        got = run(variant_graph(model, variant), x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=variant)
        assert not any(n.op_type == "QuantizeLinear" for n in variant_graph(model, variant).graph.node)
    # a scope limits the clipping to the activations inside it
    np.testing.assert_allclose(run(variant_graph(model, "weights+clip-unsigned", ("c",)), x),
                               expected["weights+clip-unsigned"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(variant_graph(model, "weights+clip", ("elsewhere/",)), x), expected["weights"],
                               rtol=1e-5, atol=1e-5)
    # int8 in a scope: the activations inside it quantised as served (numpy's round half to even, saturating at
    # the uint8 limits), the others neither clipped nor rounded
    x_q = (np.clip(np.round(x / SIGNED[0]) + SIGNED[1], 0, 255) - SIGNED[1]) * SIGNED[0]
    np.testing.assert_allclose(run(variant_graph(model, "int8", ("x",)), x), np.maximum(conv(x_q), 0),
                               rtol=1e-5, atol=1e-5)
    c = np.maximum(conv(x), 0)
    c_q = np.clip(np.round(c / UNSIGNED[0]), 0, 255) * UNSIGNED[0]
    np.testing.assert_allclose(run(variant_graph(model, "int8", ("c",)), x), c_q, rtol=1e-5, atol=1e-5)
    # the graph itself still rounds: off the unrounded one by up to half a step of each grid
    assert not np.allclose(run(variant_graph(model, "int8"), x), expected["weights+clip"], atol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        variant_graph(model, "fp16")


def test_the_16bit_grid_clips_as_the_graph_and_rounds_257_times_finer():
    model, w = qdq_graph()
    x = np.random.default_rng(2).uniform(-20, 20, (1, 2, 3, 3)).astype(np.float32)

    def on_grid(v, scale, zero, top):  # numpy's round half to even, saturating at the integer type's limits
        return (np.clip(np.round(v / scale) + zero, 0, top) - zero) * scale

    def conv(v):
        return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], v)

    sixteen = [(scale * 255 / 65535, zero * 257) for scale, zero in (SIGNED, UNSIGNED)]
    want = on_grid(conv(on_grid(x, *sixteen[0], 65535)), *sixteen[1], 65535)
    got = run(variant_graph(model, "uint16"), x)
    np.testing.assert_allclose(got, want, rtol=0, atol=UNSIGNED[0] * 255 / 65535)  # one 16-bit step
    # the same range: what the UINT8 grid clips, the 16-bit one clips at the same value
    unrounded = run(variant_graph(model, "weights+clip"), x)
    assert np.isclose(got.max(), 255 * UNSIGNED[0], atol=1e-4) and np.isclose(unrounded.max(), got.max(), atol=1e-4)
    # finer: within a 16-bit step's worth of the unrounded graph where UINT8 is off by up to half a UINT8 step
    eight = np.abs(run(variant_graph(model, "int8"), x) - unrounded).max()
    assert np.abs(got - unrounded).max() < eight / 50 and eight > UNSIGNED[0] / 4
    # a scope: only its activations on the 16-bit grid, the others neither clipped nor rounded
    np.testing.assert_allclose(run(variant_graph(model, "uint16", ("c",)), x), on_grid(conv(x), *sixteen[1], 65535),
                               rtol=0, atol=UNSIGNED[0] * 255 / 65535)
    # the signed input alone: saturated at the UINT8 pair's -12.8 and 12.7, not at a range the zero point moved
    signed_only = run(variant_graph(model, "uint16", ("x",)), x)
    np.testing.assert_allclose(signed_only, np.maximum(conv(on_grid(x, *sixteen[0], 65535)), 0), rtol=0, atol=1e-4)
    np.testing.assert_allclose(signed_only, np.maximum(conv(np.clip(x, -12.8, 12.7)), 0), rtol=0, atol=0.01)
    # wide: both limits of each range doubled, the grid still 128x finer than UINT8's
    wide = [(scale * 2 * 255 / 65535, zero * 257) for scale, zero in (SIGNED, UNSIGNED)]
    got_wide = run(variant_graph(model, "uint16-wide"), x)
    np.testing.assert_allclose(got_wide, on_grid(conv(on_grid(x, *wide[0], 65535)), *wide[1], 65535), rtol=0,
                               atol=2 * UNSIGNED[0] * 255 / 65535)
    assert got_wide.max() > 255 * UNSIGNED[0] + 1  # beyond the UINT8 range's 12.75, which the other variants clip at
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    signed_zero = next(i for i in bad.graph.initializer if i.name == "x_zero")
    signed_zero.CopyFrom(numpy_helper.from_array(np.int8(0), "x_zero"))  # an INT8 activation: not this tool's case
    with pytest.raises(ValueError, match="UINT8"):
        variant_graph(bad, "uint16")


def test_no_activation_of_the_real_int8_graph_stays_rounded(tiny_int8):
    from export.int8_mixed import activations

    model = onnx.load(str(tiny_int8.build.detector_int8))
    acts = activations(model, hw=None)
    for variant in [v for v in VARIANTS if v != "int8" and not v.startswith("uint16")]:
        out = variant_graph(model, variant)
        assert activations(out, hw=None) == []
        weight_dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
        assert weight_dq and len(weight_dq) == sum(n.op_type == "DequantizeLinear" for n in model.graph.node) - sum(
            len(a.dequantize) for a in acts)
    assert len(activations(variant_graph(model, "int8"), hw=None)) == len(acts)
    for variant in ("uint16", "uint16-wide"):
        sixteen = variant_graph(model, variant)
        assert len(activations(sixteen, hw=None)) == len(acts)
        assert all(n.domain == "com.microsoft" for n in sixteen.graph.node if n.name in {a.quantize for a in acts})


def test_quantize_int8_keeps_the_unsigned_activations_of_a_scope_fp32_and_unclipped():
    """export/quantize_int8.keep_unclipped_fp32 on the hand graph: the conv output (range from 0) leaves INT8 and
    keeps its folded Relu; the signed input under another name stays quantised (numpy's round half to even)."""
    from export.quantize_int8 import keep_unclipped_fp32

    model, w = qdq_graph()
    x = np.random.default_rng(1).uniform(-20, 20, (1, 2, 3, 3)).astype(np.float32)
    scale, zero = SIGNED
    x_q = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    out, kept = keep_unclipped_fp32(model, ("c",))
    assert kept == ["c"]
    want = np.maximum(np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x_q), 0)
    np.testing.assert_allclose(run(out, x), want, rtol=1e-5, atol=1e-5)
    assert keep_unclipped_fp32(model, ("x",))[1] == []  # signed: not taken
    assert keep_unclipped_fp32(model, ())[1] == []


def test_every_variant_gets_its_own_folder_with_the_graphs(tmp_path):
    from export.int8_error_sources import DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE, scope_variants, write_variants

    model, _ = qdq_graph()
    source = tmp_path / "int8"
    source.mkdir()
    for name in (DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE):
        onnx.save(model, str(source / name))
    variants = {v: (v, ()) for v in VARIANTS} | scope_variants(("weights+clip-signed", "int8"))
    assert len(variants) == len(VARIANTS) + 2 * len(scope_variants())
    folders = write_variants(source, tmp_path / "out", variants)
    assert list(folders) == list(variants) and len(set(folders.values())) == len(variants)
    for folder in folders.values():
        assert sorted(p.name for p in folder.iterdir()) == sorted([DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE])


def residual_graph() -> tuple[onnx.ModelProto, np.ndarray]:
    """x [1, 2, 3, 3] -> Q/DQ (signed) -> 1x1 Conv, INT8 weights -> c -> Q/DQ (signed) -> Add(c, x) -> y: the
    conv output is read only by the Add, the input by the conv and the Add; and the weights."""
    w_int = np.array([[[[50]], [[-30]]], [[[-100]], [[20]]]], np.int8)  # [2, 2, 1, 1]
    inits = [numpy_helper.from_array(w_int, "w_q"), numpy_helper.from_array(np.float32(W_SCALE), "w_scale"),
             numpy_helper.from_array(np.int8(0), "w_zero")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_dq")]
    for name in ("x", "c"):
        inits += [numpy_helper.from_array(np.float32(SIGNED[0]), f"{name}_scale"),
                  numpy_helper.from_array(np.uint8(SIGNED[1]), f"{name}_zero")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_scale", f"{name}_zero"], [f"{name}_q"],
                                   name=f"{name}_quantize"),
                  helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"], [f"{name}_dq"],
                                   name=f"{name}_dequantize")]
        if name == "x":
            nodes.append(helper.make_node("Conv", ["x_dq", "w"], ["c"], name="conv"))
    nodes.append(helper.make_node("Add", ["c_dq", "x_dq"], ["y"], name="add"))
    return hand_model(nodes, inits, "residual", [1, 2, 3, 3]), w_int.astype(np.float32) * W_SCALE


def test_quantize_int8_keeps_the_activations_no_conv_reads_fp32_and_unclipped():
    """export/quantize_int8.keep_float_read_fp32 on the residual hand graph: the conv output, read only by the Add,
    leaves INT8 (neither clipped at 12.7 nor rounded); the input, read by the conv, stays quantised."""
    from export.quantize_int8 import keep_float_read_fp32

    model, w = residual_graph()
    x = np.random.default_rng(2).uniform(-20, 20, (1, 2, 3, 3)).astype(np.float32)
    scale, zero = SIGNED

    def q(v):  # numpy's round half to even, saturating at the uint8 limits
        return (np.clip(np.round(v / scale) + zero, 0, 255) - zero) * scale

    conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], q(x))
    assert np.abs(conv).max() > 127 * scale  # the clip the served graph would apply bites
    np.testing.assert_allclose(run(model, x), q(conv) + q(x), rtol=1e-5, atol=1e-5)
    out, kept = keep_float_read_fp32(model)
    assert kept == ["c"]
    np.testing.assert_allclose(run(out, x), conv + q(x), rtol=1e-5, atol=1e-5)
    assert keep_float_read_fp32(out)[1] == []


def test_the_int8_report_times_openvino_when_the_graph_is_for_it(tiny_int8):
    """quantize_int8.time_detectors runs the INT8 graph in the runtime it was quantised for."""
    pytest.importorskip("openvino")
    from export.quantize_int8 import time_detectors

    image = np.random.default_rng(0).standard_normal((1, 3, 128, 128)).astype(np.float32)
    build = tiny_int8.build
    timing = time_detectors(build.detector, build.detector_int8, image, rounds=2, int8_runtime="openvino")
    assert timing["int8_runtime"] == "openvino" and timing["int8_ms"] > 0 and timing["rounds"] == 2
    with pytest.raises(ValueError, match="int8_runtime"):
        time_detectors(build.detector, build.detector_int8, image, rounds=1, int8_runtime="tensorrt")
