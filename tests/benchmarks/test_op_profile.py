"""benchmarks/op_profile.py: operation classes, ONNX Runtime profiler events split per run, the
convolution floor by hand, and a 2-round run on the tiny preset's graphs (the report is complete).
No time is asserted."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from benchmarks import op_profile  # noqa: E402


def test_both_runtimes_operation_names_fall_into_their_classes():
    cases = {"Convolution": "convolution", "GroupConvolution": "convolution", "QLinearConv": "convolution",
             "FusedConv": "convolution", "Reorder": "layout reorder", "Transpose": "layout reorder",
             "ReorderOutput": "layout reorder", "MVN": "normalisation", "InstanceNormalization": "normalisation",
             "DequantizeLinear": "quantise", "TopK": "selection", "Gather": "selection",
             "Subgraph": "other", "Concat": "other", "Add": "other"}
    assert {name: op_profile.op_class(name) for name in cases} == cases
    assert op_profile.class_times([("Conv", 2.0), ("Reorder", 0.5), ("Conv", 1.0), ("Sigmoid", 0.25)]) == {
        "convolution": 3.0, "layout reorder": 0.5, "normalisation": 0.0, "quantise": 0.0, "selection": 0.0,
        "other": 0.25}


def test_onnx_runtime_kernels_are_assigned_to_the_run_they_start_in():
    def kernel(op, ts, dur):
        return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 500, "args": {}},
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 300, "args": {}},  # the first run, listed later
        kernel("Conv", 120, 200), kernel("TopK", 330, 40),
        {"cat": "Node", "name": "Conv_fence_before", "ts": 130, "dur": 9, "args": {"op_name": "Conv"}},
        kernel("Conv", 1010, 1000),
        kernel("Relu", 600, 5),  # between the runs: part of neither
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 90, "args": {}},
    ]
    assert op_profile.ort_runs(events) == [[("Conv", 0.2), ("TopK", 0.04)], [("Conv", 1.0)]]


def test_the_floor_is_the_convolutions_time_over_the_reference_wall_time():
    wall = {"onnxruntime": [40.0, 50.0, 60.0], "openvino-int8": [20.0, 22.0, 30.0]}
    operations = {
        "onnxruntime": [[("Conv", 30.0)]] * 3,
        # a warm-up run first (dropped), then one run per round
        "openvino-int8": [[("Convolution", 99.0)], [("Convolution", 14.0), ("Reorder", 3.0)],
                          [("Convolution", 15.0), ("Reorder", 2.0)], [("Convolution", 12.0), ("Reorder", 6.0)]],
    }
    rows = {r["path"]: r for r in op_profile.summarise(wall, operations, {"openvino-int8": 0.30})}
    int8 = rows["openvino-int8"]
    assert int8["convolution_floor"]["median"] == pytest.approx(0.30)  # median of 14/40, 15/50, 12/60
    assert int8["vs_reference"]["median"] == pytest.approx(0.5)  # median of 0.5, 0.44, 0.5
    assert int8["class_ms"]["layout reorder"] == 3.0 and int8["profiled_total_ms"] == 17.0  # 17, 17, 18
    assert int8["goal_below_floor"] is False  # the interval reaches below 0.30
    rows = {r["path"]: r for r in op_profile.summarise(wall, operations, {"openvino-int8": 0.15})}
    assert rows["openvino-int8"]["goal_below_floor"] is True
    assert rows["onnxruntime"]["vs_reference"] is None and rows["onnxruntime"]["goal"] is None


def test_tiny_run_reports_every_path_by_class(tiny_onnx_dir, tmp_path):
    out = tmp_path / "out"
    argv = ["--onnx-dir", str(tiny_onnx_dir), "--rounds", "2", "--size", "160x128", "--threads", "1", "--out", str(out),
            "--compare-group-norms", "--no-progress"]
    assert op_profile.main(argv) == 0

    report = json.loads((out / "op_profile.json").read_text())
    assert report["input"] == "192x128"  # padded to multiples of 64
    rows = {row["path"]: row for row in report["rows"]}
    assert "onnxruntime" in rows and "onnxruntime-int8" not in rows  # no --int8-dir
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass
    else:  # OpenVINO FP32 runs on any CPU, in both GroupNorm forms
        assert {"openvino-fp32", "openvino-fp32" + op_profile.EXPORTED_GROUP_NORMS} <= set(rows)
    for row in rows.values():
        assert len(row["wall_ms_runs"]) == 2 and row["operations_per_run"] > 0
        assert set(row["class_ms"]) == set(op_profile.CLASSES)
        assert row["class_ms"]["convolution"] > 0
        assert row["convolution_floor"]["rounds"] == 2
    table = (out / "op_profile.md").read_text()
    assert all(f"| {path} |" in table for path in rows)
    assert (out / "op_profile.png").stat().st_size > 0
