"""INT8 weights in the reduced range (-64..64) for CPUs without VNNI (export/quantize_int8.py --weight-range).

Without VNNI, ONNX Runtime's fused U8S8 conv adds pairs of UINT8 x INT8 products in int16 (AVX2's
vpmaddubsw), which saturates above 32,767: 255 x 127 x 2 does, 255 x 64 x 2 does not. The reference is the
QDQ graph's own semantics, ONNX Runtime with its graph optimisations off (Dequantize -> FP32 Conv ->
Quantize: no fused kernel)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from export.quantize_int8 import reduced_weight_range  # noqa: E402
from export.weight_rounding import round_weights, weight_range  # noqa: E402
from maskface.runtimes.cpu_features import VNNI_FLAGS, cpuinfo_flags, read_cpuinfo  # noqa: E402


def _conv_graph(path, rng):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """A 3x3 conv on non-negative inputs (UINT8 up to 255), quantised per channel in the full and the
    reduced weight range; the calibration inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = tmp_path_factory.mktemp("weight_range")
    rng = np.random.default_rng(0)
    fp32 = _conv_graph(tmp / "fp32.onnx", rng)
    feeds = [{"x": rng.uniform(0, 1, (1, 8, 16, 16)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    out = {}
    for name, reduce_range in (("full", False), ("reduced", True)):
        out[name] = tmp / f"{name}.onnx"
        quantize_static(str(fp32), str(out[name]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
    return fp32, out, feeds


def _fused_vs_semantics(path, feed) -> tuple[float, float]:
    """(max |fused - unfused| of the output, the output's quantisation step)."""
    import onnx
    from onnx import numpy_helper

    from maskface.runtimes.ort_runtime import ort_session

    fused = ort_session(path).run(None, feed)[0]
    semantics = ort_session(path, optimize=False).run(None, feed)[0]
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] != "x")
    return float(np.abs(fused - semantics).max()), float(inits[out_q.input[1]])


def test_reduced_range_runs_as_its_qdq_semantics_on_any_cpu(quantised):
    _, graphs, feeds = quantised
    worst, step = _fused_vs_semantics(graphs["reduced"], feeds[0])
    assert worst <= step * 1.001, (worst, step)


def test_full_range_saturates_on_a_cpu_without_vnni(quantised):
    text = read_cpuinfo()
    if text is None or cpuinfo_flags(text, VNNI_FLAGS):
        pytest.skip("this CPU has VNNI (or no /proc/cpuinfo): its INT8 sums do not saturate")
    _, graphs, feeds = quantised
    worst, step = _fused_vs_semantics(graphs["full"], feeds[0])
    assert worst > 5 * step, (worst, step)  # measured on an AVX2 EPYC (Zen 3): 0.47 against a step of ~0.04


def test_weight_rounding_keeps_the_reduced_range(quantised):
    import onnx
    from onnx import numpy_helper

    fp32, graphs, feeds = quantised
    model = onnx.load(str(graphs["reduced"]))
    summary = round_weights(model, onnx.load(str(fp32)), feeds, reduce_range=True)
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert summary.convs == 1 and weights and all(np.abs(w).max() <= 64 for w in weights)
    assert weight_range(np.int8, np.zeros(3, np.int8), reduce_range=True) == (-64, 64)
    assert weight_range(np.int8, np.zeros(3, np.int8)) == (-127, 127)
    with pytest.raises(ValueError, match="symmetric"):
        weight_range(np.uint8, np.full(3, 128, np.uint8), reduce_range=True)


@pytest.mark.parametrize("flags, expected", [("fpu avx2 fma", True), ("avx2 avx512f avx512_vnni", False),
                                             ("avx2 avx_vnni", False), ("avx2 amx_int8 amx_tile", False)])
def test_auto_weight_range_follows_vnni(flags, expected):
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert reduced_weight_range("auto", cpuinfo) is expected
    assert reduced_weight_range("reduced", cpuinfo) is True and reduced_weight_range("full", cpuinfo) is False
    with pytest.raises(ValueError, match="weight range"):
        reduced_weight_range("7bit", cpuinfo)


def test_serving_warns_of_full_range_weights_on_a_cpu_without_vnni(quantised):
    from maskface.runtimes.cpu_features import int8_saturation_warning

    _, graphs, _ = quantised
    avx2, vnni = "flags\t\t: avx2 fma\n", "flags\t\t: avx2 avx512f avx512_vnni\n"
    assert "--weight-range reduced" in int8_saturation_warning(graphs["full"], avx2)
    assert int8_saturation_warning(graphs["reduced"], avx2) is None
    assert int8_saturation_warning(graphs["full"], vnni) is None
