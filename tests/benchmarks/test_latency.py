"""Smoke tests of benchmarks/latency.py with tiny settings (mbv2, 128x128, 2 runs, faces 1 and 2).

No test asserts a wall-clock time: speed is reported by the benchmarks, never checked here.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import latency

STATS = {"median", "p90", "min", "mean", "n"}
ROW_FIELDS = {
    "backbone", "backbone_name", "size", "input_hw", "backend", "engine", "precision", "device_kind", "device_name",
    "threads", "batch", "trained", "checkpoint", "seed", "runs", "warmup", "preprocess_included", "e2e_faces",
    "detector_ms", "nms_ms", "nms_full_ms", "nms_kept", "nms_full_kept", "nms_full_candidates", "num_candidates",
    "keypoints", "e2e_keypoints_ms", "e2e_ms", "checks", "notes", "gflop", "gflops_achieved", "peak_fraction",
}
TOP_FIELDS = {"schema_version", "complete", "created", "command", "environment", "settings", "definitions",
              "preprocess_ms", "paper_table7", "rows", "ratios", "skipped"}
ENV_FIELDS = {"torch", "cpu", "device", "device_name", "threads", "cpu_available", "peak", "onnxruntime"}
TINY = ["--backbones", "mbv2", "--sizes", "128x128", "--runs", "2", "--warmup", "1", "--faces", "1,2",
        "--e2e-faces", "2", "--device", "cpu", "--threads", "2", "--no-progress", "--peak-runs", "2",
        "--backends", "torch-fp32,onnxruntime"]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out, cache = root / "out", root / "cache"
    code = latency.main(TINY + ["--out", str(out), "--cache-dir", str(cache)])
    return code, out, cache


def test_tiny_run_writes_every_field(tiny_run):
    code, out, _ = tiny_run
    assert code == 0
    report = json.loads((out / "latency.json").read_text())
    assert TOP_FIELDS <= set(report)
    assert report["complete"] is True
    assert ENV_FIELDS <= set(report["environment"])
    peak = report["environment"]["peak"]
    assert peak["estimate"] is False and peak["source"] == "measured" and peak["threads"] == 2
    assert set(peak["kernels"]) == {"conv3x3", "sgemm"} and peak["gflops"] > 0
    assert report["environment"]["peak_estimate"]["estimate"] is True

    expected = {"torch-fp32", "onnxruntime"} if _has("onnxruntime") else {"torch-fp32"}
    assert {r["backend"] for r in report["rows"]} == expected
    for row in report["rows"]:
        missing = ROW_FIELDS - set(row)
        assert not missing, f"{row['backend']} lacks {missing}"
        assert row["backbone"] == "mbv2" and row["size"] == "128x128" and row["input_hw"] == [128, 128]
        assert row["trained"] is False and row["seed"] == 0 and row["preprocess_included"] is False
        assert row["threads"] == 2 and row["runs"] == 2 and row["device_kind"] == "cpu"
        for stage in ("detector_ms", "nms_ms", "nms_full_ms", "e2e_ms", "e2e_keypoints_ms", "pipeline_ms"):
            assert STATS <= set(row[stage]), stage
            assert row[stage]["n"] == 2 and 0 < row[stage]["median"] <= row[stage]["p90"] + 1e-9
        assert set(row["keypoints"]) == {"1", "2"}
        for v in row["keypoints"].values():
            assert STATS <= set(v["total_ms"]) and STATS <= set(v["per_face_ms"])
        # The e2e chain contains the detector and the NMS it is stamped from.
        assert row["e2e_ms"]["median"] >= row["detector_ms"]["median"]
        assert row["gflop"]["detector"] > 0 and row["gflop"]["keypoint_per_face"] > 0
        assert row["gflop"]["e2e"] == pytest.approx(row["gflop"]["detector"] + 2 * row["gflop"]["keypoint_per_face"])
        assert {"detector", "e2e", "keypoints_1", "keypoints_2"} <= set(row["gflops_achieved"])
        if peak["gflops"]:
            assert row["peak_fraction"]["detector"] == pytest.approx(
                row["gflops_achieved"]["detector"] / peak["gflops"])
        assert 0 < row["nms_full_candidates"] <= row["num_candidates"] == 3840
        # the per-run times behind each summary, kept for pairing rounds across backends
        assert set(row["runs_ms"]) == {"detector", "e2e", "pipeline"}
        for stage, runs in row["runs_ms"].items():
            assert len(runs) == 2 and np.median(runs) == pytest.approx(row[f"{stage}_ms"]["median"])
    if expected == {"torch-fp32", "onnxruntime"}:
        assert len(report["ratios"]) == 1 and report["ratios"][0]["detector"] > 0
        (torch_row,) = report["vs_onnxruntime_fp32"]
        rows = {r["backend"]: r for r in report["rows"]}
        by_round = np.divide(rows["torch-fp32"]["runs_ms"]["detector"], rows["onnxruntime"]["runs_ms"]["detector"])
        assert torch_row["detector_paired"]["median"] == pytest.approx(np.median(by_round))
        assert torch_row["detector_paired"]["rounds"] == 2
    assert set(report["preprocess_ms"]) == {"128x128"}
    assert [p["method"] for p in report["paper_table7"]].count("MaskFace") == 2


def test_markdown_has_the_papers_rows_and_png_exists(tiny_run):
    _, out, _ = tiny_run
    md = (out / "latency.md").read_text()
    for text in ("RetinaFace", "RefineFace", "DFS", "ResNeXt-152", "NVIDIA GeForce RTX 2080 Ti", "NVIDIA Tesla P40",
                 "NVIDIA GeForce GTX 1080 Ti", "| 20.0 |", "| 55.0 |", "| 75.0 |", "| 35.0 |", "| 57.0 |", "0.11",
                 "paper Table 7", "untrained", "preprocessing EXCLUDED", "an ESTIMATE"):
        assert text in md, text
    assert "| MobileNetV2 | 128x128 (128x128) | torch-fp32 | FP32 | cpu | 2 |" in md
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_onnx_cache_is_reused_while_the_key_matches(tiny_run):
    pytest.importorskip("onnxruntime")
    _, _, cache = tiny_run
    folder = cache / "onnx" / "mbv2"
    meta = json.loads((folder / "export_meta.json").read_text())
    torch.manual_seed(0)
    model, _ = latency.load_model("mbv2", None, 0)
    key = latency.model_key(model.cfg, 0, None)
    assert meta["key"] == key
    stamp = (folder / "detector.onnx").stat().st_mtime_ns
    messages = []
    latency.cached_onnx_export(model, key, cache, messages.append)
    assert (folder / "detector.onnx").stat().st_mtime_ns == stamp and "reusing" in messages[0]
    # Another seed or another config is another key (so a stale export is never reused).
    assert latency.model_key(model.cfg, 1, None) != key
    other = latency.load_model("mbv2", None, 0)[0].cfg
    other.inference.pre_nms_topk = 1000
    assert latency.model_key(other, 0, None) != key


def test_cuda_backends_are_skipped_with_a_reason_on_cpu(tmp_path):
    code = latency.main(TINY + ["--backends", "torch-fp16,tensorrt-fp16", "--out", str(tmp_path)])
    assert code == 1  # no row could run
    report = json.loads((tmp_path / "latency.json").read_text())
    assert report["rows"] == []
    assert {s["backend"] for s in report["skipped"]} == {"torch-fp16", "tensorrt-fp16"}
    assert all("cuda" in s["reason"].lower() for s in report["skipped"])
    assert "## Skipped" in (tmp_path / "latency.md").read_text()


def test_peak_estimate_formula():
    info = {"flags": ["avx", "avx2", "fma"], "physical_cores": 8, "max_mhz": 3000.0, "mhz_source": "test"}
    peak = latency.cpu_peak_gflops(info, threads=4)
    assert peak["gflops"] == pytest.approx(4 * 3.0 * 8 * 2 * 2) and peak["estimate"] is True
    assert latency.cpu_peak_gflops({**info, "flags": ["avx512f", "fma"]}, 16)["gflops"] == pytest.approx(8 * 3 * 16 * 2 * 2)
    assert latency.cpu_peak_gflops({**info, "flags": ["sse2"]}, 1)["gflops"] == pytest.approx(3 * 4 * 1 * 2)
    assert latency.cpu_peak_gflops({**info, "max_mhz": None}, 1)["gflops"] is None


def test_measured_peak_counts_the_flops_it_times():
    """FLOPs of the timed kernels as torch's own FLOP counter sees them; rate = FLOPs / median time."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import hardware

    shape = {"channels": 16, "height": 12, "width": 10}
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.conv2d(torch.zeros(1, 16, 12, 10), torch.zeros(16, 16, 3, 3), padding=1)
    assert hardware.conv3x3_flop(**shape) == counter.get_total_flops() == 2 * 16 * 16 * 9 * 12 * 10
    peak = hardware.measure_peak_gflops("cpu", threads=1, runs=3, conv_shape=shape, sgemm_size=64)
    assert peak["estimate"] is False and peak["threads"] == 1
    for name, k in peak["kernels"].items():
        assert k["runs"] == 3 and k["gflops"] == pytest.approx(k["gflop"] / (k["median_ms"] / 1e3))
    assert peak["kernels"]["sgemm"]["gflop"] == pytest.approx(2 * 64**3 / 1e9)
    assert peak["gflops"] == max(k["gflops"] for k in peak["kernels"].values())
    before = torch.get_num_threads()
    hardware.measure_peak_gflops("cpu", threads=1, runs=1, conv_shape=shape, sgemm_size=32)
    assert torch.get_num_threads() == before


def test_arguments():
    assert latency.parse_size("640x480") == (640, 480)
    with pytest.raises(SystemExit):
        latency.parse_args(["--sizes", "640by480"])
    with pytest.raises(SystemExit):
        latency.parse_args(["--backends", "tensorflow"])
    args = latency.parse_args(["--device", "cpu"])
    assert args.backbones == ["demo", "r50"] and args.sizes == [(640, 480)] and args.faces == [1, 4, 16, 64]
    assert args.backends == ["torch-fp32", "onnxruntime", "onnxruntime-int8", "openvino-int8", "openvino-bf16",
                             "torch-bf16", "triton-cpu"]
    assert args.runs == 10 and args.interleave is True
    assert latency.model_checkpoint("demo", None).endswith("maskface_demo.pth")  # the default model
    assert latency.model_checkpoint("r50", None) is None and latency.model_checkpoint("demo", "x.pth") == "x.pth"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            latency.parse_args(["--device", "cuda"])


def test_e2e_rois_are_nms_survivors_topped_up_with_candidates():
    torch_runner = latency.TorchRunner.__new__(latency.TorchRunner)
    ort_runner = latency.OrtRunner(graphs=None, engine="test")
    for runner, kept in ((torch_runner, torch.tensor([3, 1])), (ort_runner, np.array([3, 1]))):
        assert list(runner.fill(kept, 10, 4)) == [3, 1, 0, 2]
        assert list(runner.fill(kept, 10, 1)) == [3]
        assert list(runner.fill(kept[:0], 10, 2)) == [0, 1]


def test_backends_are_interleaved_in_varying_orders_stages_then_pipelines():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def iteration(self, record, part):
            calls.append((self.name, record, part))

        def result(self):
            return {"name": self.name}

    timers = {n: Fake(n) for n in "abc"}
    ticks = []
    out = latency.run_interleaved(timers, runs=9, warmup=1, tick=lambda: ticks.append(1))
    assert out == {n: {"name": n} for n in "abc"}
    assert len(ticks) == 3 * 2 * (1 + 9)  # the progress bar's total: timers x passes x iterations
    # every stage first, then the pipelines in a pass of their own (no request after stage calls)
    assert [part for _, _, part in calls] == ["stages"] * 30 + ["pipeline"] * 30
    for start in range(0, 60, 3):  # each round times every backend once; the first round untimed
        one_round = calls[start:start + 3]
        assert sorted(name for name, _, _ in one_round) == ["a", "b", "c"]
        assert {record for _, record, _ in one_round} == {start % 30 >= 3}
    # within rounds, each backend comes after each other one at least once (a rotation never puts
    # "a" right after "b" inside a round)
    pairs = {(calls[i][0], calls[i + 1][0]) for i in range(0, 60, 3) for i in (i, i + 1)}
    assert pairs == {(x, y) for x in "abc" for y in "abc" if x != y}
    again = []
    Fake.iteration = lambda self, record, part: again.append((self.name, record, part))
    latency.run_interleaved(timers, runs=9, warmup=1, tick=lambda: None)
    assert again == calls  # seeded: the same orders on every run
    Fake.iteration = lambda self, record, part: calls.append((self.name, record, part))
    calls.clear()
    latency.run_interleaved(timers, runs=1, warmup=0, tick=lambda: None, interleave=False)
    assert calls == [("a", True, "stages"), ("b", True, "stages"), ("c", True, "stages"),
                     ("a", True, "pipeline"), ("b", True, "pipeline"), ("c", True, "pipeline")]


def test_a_failing_backend_is_reported_and_the_others_go_on():
    class Fine:
        def iteration(self, record, part):
            pass

        def result(self):
            return {"ok": True}

    class Broken(Fine):
        def iteration(self, record, part):
            raise RuntimeError("server gone")

    out = latency.run_interleaved({"fine": Fine(), "broken": Broken()}, runs=3, warmup=0, tick=lambda: None)
    assert out["fine"] == {"ok": True} and isinstance(out["broken"], RuntimeError)


def test_ratios_to_onnxruntime_fp32_and_goals():
    def row(backend, detector, e2e, pipeline):
        return {"backbone": "demo", "size": "640x480", "backend": backend, "precision": "x",
                "detector_ms": {"median": detector}, "e2e_ms": {"median": e2e},
                "pipeline_ms": None if pipeline is None else {"median": pipeline},
                "gflops_achieved": {"detector": 4.6 / (detector / 1e3)}}

    rows = [row("onnxruntime", 40.0, 50.0, 60.0), row("onnxruntime-int8", 10.0, 20.0, 30.0),
            row("torch-bf16", 24.0, 30.0, None), row("triton-cpu", 41.0, 70.0, 63.0)]
    out = {q["backend"]: q for q in latency.vs_onnxruntime_fp32(rows, latency.CPU_GOALS)}
    assert set(out) == {"onnxruntime-int8", "torch-bf16", "triton-cpu"}
    assert out["onnxruntime-int8"]["detector"] == pytest.approx(0.25) and out["onnxruntime-int8"]["goal"]["met"] is True
    assert out["torch-bf16"]["detector"] == pytest.approx(0.6) and out["torch-bf16"]["goal"]["met"] is False
    assert out["torch-bf16"]["pipeline"] is None
    assert out["triton-cpu"]["pipeline"] == pytest.approx(1.05) and out["triton-cpu"]["goal"]["met"] is True
    assert out["onnxruntime-int8"]["detector_gflops_effective"] == pytest.approx(460.0)  # 4.6 GFLOP in 10 ms
    assert out["onnxruntime-int8"]["detector_paired"] is None     # no per-run times: nothing to pair

    # per-run times pair up round by round, unless the backends ran one after another
    runs = {"onnxruntime": [40.0, 80.0, 40.0], "onnxruntime-int8": [10.0, 20.0, 10.0]}
    for r in rows[:2]:
        r["runs_ms"] = {"detector": runs[r["backend"]]}
    paired = {q["backend"]: q for q in latency.vs_onnxruntime_fp32(rows, latency.CPU_GOALS)}
    assert paired["onnxruntime-int8"]["detector_paired"]["median"] == pytest.approx(0.25)
    assert paired["onnxruntime-int8"]["goal"]["decided"] is True
    rows[1]["interleaved"] = False
    apart = {q["backend"]: q for q in latency.vs_onnxruntime_fp32(rows, latency.CPU_GOALS)}
    assert apart["onnxruntime-int8"]["detector_paired"] is None and apart["onnxruntime-int8"]["goal"]["decided"] is None


def test_paired_ratio_divides_round_by_round_and_brackets_its_median():
    from benchmarks import latency_report

    # a slow spell (rounds 3-4) hits both backends alike: every per-round ratio is exactly 0.5
    reference = [40.0, 42.0, 80.0, 84.0, 41.0]
    paired = latency_report.paired_ratio([20.0, 21.0, 40.0, 42.0, 20.5], reference)
    assert paired["median"] == pytest.approx(0.5) and paired["low"] == paired["high"] == pytest.approx(0.5)
    assert paired["rounds"] == 5 and paired["level"] == 0.9
    # hand-computed ratios 0.4, 0.5, 0.6, 0.7, 0.8: median 0.6; the bootstrap interval holds it and stays
    # inside the ratios' range; the same seed gives the same interval
    runs = [r * 40.0 for r in (0.4, 0.5, 0.6, 0.7, 0.8)]
    spread = latency_report.paired_ratio(runs, [40.0] * 5)
    assert spread["median"] == pytest.approx(0.6)
    assert 0.4 <= spread["low"] < 0.6 < spread["high"] <= 0.8
    assert spread == latency_report.paired_ratio(runs, [40.0] * 5)
    # nothing to pair
    assert latency_report.paired_ratio(runs, [40.0] * 4) is None
    assert latency_report.paired_ratio(None, [40.0]) is None and latency_report.paired_ratio([1.0], [2.0]) is None


def test_goal_within_noise_when_the_interval_holds_the_bound():
    from benchmarks import latency_report

    clear = latency_report.goal_verdict(0.50, {"low": 0.47, "high": 0.53}, 0.55)
    assert clear == {"at_most": 0.55, "met": True, "decided": True}
    missed = latency_report.goal_verdict(0.66, {"low": 0.60, "high": 0.70}, 0.55)
    assert missed["met"] is False and missed["decided"] is True
    straddle = latency_report.goal_verdict(0.54, {"low": 0.50, "high": 0.60}, 0.55)
    assert straddle["met"] is True and straddle["decided"] is False
    assert latency_report.goal_verdict(0.54, None, 0.55)["decided"] is None
    assert latency_report._verdict({"stage": "detector"} | straddle) == "detector <= 0.55x: met (within noise)"
    assert latency_report._verdict({"stage": "detector"} | clear) == "detector <= 0.55x: met"


def test_openvino_rows_run_or_say_why(tmp_path):
    """openvino-bf16 runs where the CPU has native BF16 (else a skip naming the reason); openvino-int8
    without INT8 graphs is a skip that says which command writes them."""
    pytest.importorskip("openvino")
    from maskface.runtimes.openvino_runtime import openvino_bf16_support

    args = list(TINY)
    args[args.index("--backends") + 1] = "onnxruntime,openvino-bf16,openvino-int8"
    code = latency.main(args + ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                                "--int8-dir", str(tmp_path / "no_int8")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "latency.json").read_text())
    skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "quantise them first" in skipped["openvino-int8"]
    if openvino_bf16_support().native:
        row = next(r for r in report["rows"] if r["backend"] == "openvino-bf16")
        assert row["engine"].startswith("OpenVINO") and row["nms_full_candidates"] > 0
        goals = {g["backend"]: g for g in report["vs_onnxruntime_fp32"]}
        assert goals["openvino-bf16"]["goal"]["at_most"] == 0.55
    else:
        assert "native BF16" in skipped["openvino-bf16"]


def test_each_int8_row_reads_the_folder_of_its_runtime(tmp_path):
    """A graph is quantised for one runtime (quantize_int8 --runtime): onnxruntime-int8 reads
    --onnxruntime-int8-dir, openvino-int8 --int8-dir; without the former both read --int8-dir."""
    pytest.importorskip("openvino")
    args = list(TINY)
    args[args.index("--backends") + 1] = "onnxruntime,onnxruntime-int8,openvino-int8"
    ov_dir, ort_dir = tmp_path / "int8_openvino", tmp_path / "int8_onnxruntime"

    def skipped(extra):
        out = tmp_path / f"out{len(extra)}"
        assert latency.main(args + ["--out", str(out), "--cache-dir", str(tmp_path / "cache")] + extra) == 0
        return {s["backend"]: s["reason"] for s in json.loads((out / "latency.json").read_text())["skipped"]}

    apart = skipped(["--int8-dir", str(ov_dir), "--onnxruntime-int8-dir", str(ort_dir)])
    assert str(ort_dir) in apart["onnxruntime-int8"] and str(ov_dir) not in apart["onnxruntime-int8"]
    assert str(ov_dir) in apart["openvino-int8"] and str(ort_dir) not in apart["openvino-int8"]
    one = skipped(["--int8-dir", str(ov_dir)])
    assert str(ov_dir) in one["onnxruntime-int8"] and str(ov_dir) in one["openvino-int8"]
