"""maskface.runtimes.openvino_runtime: the exported graphs in OpenVINO (the CPU BF16 / INT8 paths).

References are independent of the code under test: ONNX Runtime running the same graph (FP32), and
hand-written /proc/cpuinfo texts for the support check.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

from maskface.runtimes import openvino_runtime as ovr  # noqa: E402
from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime  # noqa: E402

FLAGS_COMMON = "fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512vl"
CPUINFO_NO_BF16 = f"processor\t: 0\nflags\t\t: {FLAGS_COMMON} avx512_vnni\n"  # Cascade Lake
CPUINFO_AMX = f"processor\t: 0\nflags\t\t: {FLAGS_COMMON} avx512_bf16 amx_bf16 amx_tile amx_int8\n"  # Sapphire Rapids


def test_bf16_support_needs_both_the_cpu_flags_and_openvino():
    yes = ovr.openvino_bf16_support(CPUINFO_AMX, capabilities=["FP32", "BF16", "INT8"])
    assert yes.native and yes.cpu_flags == ("avx512_bf16", "amx_bf16")
    no_flags = ovr.openvino_bf16_support(CPUINFO_NO_BF16, capabilities=["FP32", "BF16"])
    assert not no_flags.native and "emulated" in no_flags.reason
    no_plugin = ovr.openvino_bf16_support(CPUINFO_AMX, capabilities=["FP32", "INT8"])
    assert not no_plugin.native and "does not list BF16" in no_plugin.reason


def test_bf16_refused_on_a_cpu_without_it_saying_what_to_use():
    unsupported = ovr.openvino_bf16_support(CPUINFO_NO_BF16, capabilities=["FP32", "BF16"])
    with pytest.raises(ovr.OpenVinoUnavailableError, match="native BF16.*Use fp32 or int8"):
        ovr.require_openvino_precision("bf16", unsupported)
    with pytest.raises(ValueError, match="must be one of fp32, bf16, int8"):
        ovr.require_openvino_precision("fp8")
    ovr.require_openvino_precision("int8", unsupported)  # INT8 does not need BF16


def test_fp32_graph_matches_onnx_runtime(tiny_graphs):
    _, folder = tiny_graphs
    ort_graphs = OrtRuntime(folder / "detector.onnx", folder / "keypoint_head_portable.onnx", threads=1)
    ov = ovr.OpenVinoGraph(folder / "detector.onnx", "f32", threads=1, static_shapes=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 192)).astype(np.float32)
    expected = ort_graphs.detector.run(None, {"images": x})
    got = ov.run(None, {"images": x})
    assert [g.shape for g in got] == [e.shape for e in expected]
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)  # scores
    for g, e in zip(got[2:], expected[2:]):  # feature maps
        np.testing.assert_allclose(g, e, atol=1e-3, rtol=1e-3)
    # outputs by name, in the order asked
    scores_only = ov.run(["scores"], {"images": x})
    assert len(scores_only) == 1 and np.array_equal(scores_only[0], got[0])


def test_operation_times_of_the_last_run_need_profiling(tiny_graphs):
    _, folder = tiny_graphs
    x = np.zeros((1, 3, 128, 192), np.float32)
    with pytest.raises(RuntimeError, match="profile=True"):
        ovr.OpenVinoGraph(folder / "detector.onnx", "f32", threads=1).operation_times()
    profiled = ovr.OpenVinoGraph(folder / "detector.onnx", "f32", threads=1, static_shapes=True, profile=True)
    with pytest.raises(RuntimeError, match="no run yet"):
        profiled.operation_times()
    profiled.run(None, {"images": x})
    times = profiled.operation_times()
    assert {"Convolution", "TopK"} <= {node_type for node_type, _, _ in times}
    assert all(ms >= 0 for _, _, ms in times) and sum(ms for _, _, ms in times) > 0


def test_static_shapes_compile_once_per_shape_within_a_bound(tiny_graphs):
    _, folder = tiny_graphs
    ov = ovr.OpenVinoGraph(folder / "detector.onnx", "f32", threads=1, static_shapes=True, max_shapes=2)
    shapes = [(1, 3, 128, 192), (1, 3, 192, 128), (1, 3, 128, 192), (1, 3, 64, 64)]
    first = {}
    for shape in shapes:
        x = np.full(shape, 0.5, np.float32)
        scores = ov.run(["scores"], {"images": x})[0]
        first.setdefault(shape, scores)
        np.testing.assert_array_equal(scores, first[shape])  # a cached compile gives the same numbers
    # 3 distinct shapes, bound 2: the least recently used (192x128) was evicted
    assert list(ov._compiled) == [(shapes[2],), (shapes[3],)]


def test_missing_input_and_graph_say_what_is_wrong(tiny_graphs, tmp_path):
    _, folder = tiny_graphs
    ov = ovr.OpenVinoGraph(folder / "detector.onnx", "f32", threads=1)
    with pytest.raises(KeyError, match="missing inputs"):
        ov.run(None, {"pictures": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(FileNotFoundError, match="build_engines"):
        ovr.OpenVinoGraph(tmp_path / "detector.onnx")
    with pytest.raises(FileNotFoundError, match="quantise them first"):
        ovr.OpenVinoRuntime(tmp_path, "int8")


def test_fp32_pipeline_finds_what_onnx_runtime_finds(tiny_graphs):
    model, folder = tiny_graphs
    inference = model.cfg.inference
    inference.score_threshold = 0.0  # the seeded tiny model: every candidate counts
    inference.max_detections = 6
    image = (np.random.default_rng(1).uniform(0, 255, (150, 170, 3))).astype(np.uint8)
    expected = OnnxPredictor(OrtRuntime(folder / "detector.onnx", folder / "keypoint_head_portable.onnx", 1),
                             inference, model.cfg.input)(image)
    got = ovr.OpenVinoPredictor(ovr.OpenVinoRuntime(folder, "fp32", 1), inference, model.cfg.input)(image)
    assert len(got["scores"]) == len(expected["scores"]) == 6
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5)
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-2)
    np.testing.assert_allclose(got["landmarks"], expected["landmarks"], atol=1e-2)


def test_inference_hint_lowers_int8_only_where_bf16_is_native():
    # int8's floating-point layers run in BF16 only where OpenVINO has it natively (inference_hint's doc has
    # the measurement); elsewhere the hint would emulate BF16. fp32 never, bf16 always (its own check refuses
    # a CPU without it).
    native = ovr.openvino_bf16_support(CPUINFO_AMX, ["FP32", "BF16"])
    emulated = ovr.openvino_bf16_support(CPUINFO_NO_BF16, ["FP32", "BF16"])
    assert native.native and not emulated.native
    assert [ovr.inference_hint(p, native) for p in ("fp32", "int8", "bf16")] == ["f32", "bf16", "bf16"]
    assert [ovr.inference_hint(p, emulated) for p in ("fp32", "int8", "bf16")] == ["f32", "f32", "bf16"]
    assert ovr.inference_hint("int8") == ("bf16" if ovr.openvino_bf16_support().native else "f32")
    with pytest.raises(ValueError, match="must be one of"):
        ovr.inference_hint("fp8")
