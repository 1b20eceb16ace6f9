"""export/tensorrt_build.py and export/engine_runner.py.

The TensorRT code path runs against a stand-in ``tensorrt`` module that records the calls and
refuses what TensorRT documents it refuses (tests/export/trt_standin.py) on the real exported graphs:
status reasons, profiles, the one strongly typed FP16 path of TensorRT 10 and 11, plugin loading
before parsing, parser error reports, engines.json, atomic writes, and the runner's binding logic
(checked with a formula executor a test can redo by hand; the graph-level results are compared with
PyTorch, never with the ONNX Runtime session the stand-in runs). A real
``tensorrt`` with a builder and a GPU is used where present (not on the CPU machines), and the real
``tensorrt_lean`` runtime loads the plugin library where the library can be built.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from export import engine_runner, tensorrt_build
from export.engine_runner import EngineLoadError, TrtEngine, TrtGraphs, import_runtime
from export.tensorrt_build import (
    EngineBuildError,
    OnnxParseError,
    PluginLoadError,
    ProfileRanges,
    TensorRTUnavailable,
    build_engines,
    precision_plan,
    profile_shapes,
    tensorrt_status,
)
from maskface.serving.manifest import EngineManifest
from maskface.serving.onnx_graphs import OnnxGraphs
from tests.export.conftest_trt import exported_graphs
from tests.export.trt_standin import FormulaExecutor, OnnxExecutor, make_tensorrt, make_tensorrt_lean

REPO = Path(__file__).resolve().parents[2]
DET_SHAPES = {"images": (-1, 3, -1, -1)}
KP_SHAPES = {**{f"m{k}": (-1, 256, -1, -1) for k in range(2, 7)}, "rois": (-1, 5)}
FAKE_GPU = {"name": "Stand-in GPU", "compute_capability": "9.0"}


@pytest.fixture(scope="session")
def graphs(tmp_path_factory, export_model):
    return exported_graphs(tmp_path_factory, export_model)


@pytest.fixture(scope="session")
def fake_plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "libmaskface_plugins.so"
    path.write_bytes(b"stand-in plugin library")
    return path


def _install(monkeypatch, trt) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_cuda_reason", lambda: None)
    monkeypatch.setattr(tensorrt_build, "gpu_info", lambda: dict(FAKE_GPU))


def _build(tmp: Path, graphs, plugin, version: str, standin_kwargs=None, **kwargs):
    trt = make_tensorrt(version, **(standin_kwargs or {}))
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, trt)
        kwargs.setdefault("fp16_dir", tmp / "onnx_fp16")
        meta = build_engines({k: graphs[k] for k in ("detector", "keypoint_head")}, tmp, plugin_library=plugin,
                             max_size=512, max_batch=2, max_faces=64, echo=None, **kwargs)
    return trt, meta


@pytest.fixture(scope="module")
def builds(tmp_path_factory, graphs, fake_plugin):
    """FP16 builds with the stand-in of TensorRT 11.1 and 10.16 (both strongly typed)."""
    out = {}
    for key, version in (("11", "11.1.0.0"), ("10", "10.16.0.0")):
        tmp = tmp_path_factory.mktemp(f"engines-{key}")
        trt, meta = _build(tmp, graphs, fake_plugin, version, fp16=True)
        out[key] = (trt, meta, tmp)
    return out


def _plan(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.plan").read_bytes())


# --------------------------------------------------------------------------------------------- status


def test_status_without_the_tensorrt_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # "import tensorrt" raises ImportError
    available, reason = tensorrt_status()
    assert not available and "'tensorrt' is not installed" in reason
    if importlib.util.find_spec("tensorrt_lean") is not None:
        assert "tensorrt_lean" in reason and "without builder" in reason
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        build_engines({}, "unused")


def test_status_of_a_runtime_only_package_and_of_a_machine_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt_lean("11.4.0.106"))
    available, reason = tensorrt_status()
    assert not available and "no Builder / OnnxParser" in reason and "11.4.0.106" in reason

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.16.0.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    available, reason = tensorrt_status()
    assert not available and "no CUDA GPU (torch.cuda.is_available() is False)" in reason and "10.16.0.0" in reason
    assert tensorrt_status(require_gpu=False) == (True, "tensorrt 10.16.0.0")

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("9.3.0.1"))
    available, reason = tensorrt_status()
    assert not available and "not supported" in reason


def test_status_with_tensorrt_and_a_gpu(monkeypatch):
    _install(monkeypatch, make_tensorrt("11.1.0.0"))
    assert tensorrt_status() == (True, "tensorrt 11.1.0.0 on Stand-in GPU")


def test_status_of_this_machine_is_consistent():
    available, reason = tensorrt_status()
    print(f"\ntensorrt_status() here: {available}, {reason!r}")
    assert reason
    if not available:
        assert "tensorrt" in reason


# --------------------------------------------------------------------------------------------- profiles and precision


def test_profiles_follow_the_image_range():
    ranges = ProfileRanges(max_size=1024, max_batch=4, max_faces=100)
    det = profile_shapes(DET_SHAPES, ranges)
    # opt (480, 640): a 640x480 photo, padded by preprocessing to the 64-multiple 512x640.
    assert det == {"images": ((1, 3, 64, 64), (1, 3, 512, 640), (4, 3, 1024, 1024))}
    kp = profile_shapes(KP_SHAPES, ranges)
    for k in range(2, 6):
        s = 2 ** k
        assert kp[f"m{k}"] == ((1, 256, 64 // s, 64 // s), (1, 256, 512 // s, 640 // s), (4, 256, 1024 // s, 1024 // s))
    assert kp["m6"] == ((1, 256, 1, 1), (1, 256, 8, 10), (4, 256, 16, 16))
    assert kp["rois"] == ((0, 5), (16, 5), (100, 5))


def test_profiles_clamp_and_round_opt_and_reject_bad_ranges():
    ranges = ProfileRanges(max_size=512, max_batch=2, max_faces=8, opt_size=(500, 700), opt_batch=3, opt_faces=16)
    det = profile_shapes(DET_SHAPES, ranges)
    assert det["images"][1] == (2, 3, 512, 512)  # 500 -> 512, 700 -> 704 -> clamped to 512; batch clamped
    assert profile_shapes(KP_SHAPES, ranges)["rois"] == ((0, 5), (8, 5), (8, 5))
    with pytest.raises(ValueError, match="multiple of 64"):
        ProfileRanges(max_size=1000)
    with pytest.raises(ValueError, match="min_faces"):
        ProfileRanges(min_faces=5, max_faces=2)
    with pytest.raises(ValueError, match="axis 1 is dynamic in the graph but has no profile range"):
        profile_shapes({"images": (-1, -1, -1, -1)}, ProfileRanges())
    with pytest.raises(ValueError, match="rank 3"):
        profile_shapes({"rois": (-1, 5, 1)}, ProfileRanges())
    with pytest.raises(ValueError, match="axis 0 is 2 in the graph, the profile asks 1"):
        profile_shapes({"images": (2, 3, -1, -1)}, ProfileRanges())
    with pytest.raises(ValueError, match="no profile rule"):
        profile_shapes({"mask": (-1, 1)}, ProfileRanges())


def test_precision_plan_is_one_strongly_typed_path():
    for major in (10, 11):
        plan = precision_plan(major, fp16=True)
        assert (plan.precision, plan.onnx_variant, plan.cleared_flags) == ("fp16", "fp16", ("TF32",))
        assert precision_plan(major, fp16=False).onnx_variant == "fp32"
    assert precision_plan(10, fp16=False, tf32=True).cleared_flags == ()
    trt10, trt11 = make_tensorrt("10.16.0.0"), make_tensorrt("11.1.0.0")
    # NvInfer.h 10.16:12113 kSTRONGLY_TYPED = 1; 11.1: always strongly typed, the flag is ignored.
    assert tensorrt_build.network_flags(trt10, 10) == 1 << 1 and tensorrt_build.network_flags(trt11, 11) == 0
    with pytest.raises(ValueError, match="not supported"):
        precision_plan(9, fp16=True)


# --------------------------------------------------------------------------------------------- builds (stand-in)


def test_tensorrt11_fp16_build_uses_the_fp16_graph_and_no_precision_flags(builds, graphs, fake_plugin):
    trt, meta, out = builds["11"]
    names = [c[0] for c in trt.calls]
    assert ("create_network", 0) in trt.calls  # strongly typed by default; no deprecated flag passed
    assert not any(c[0] in ("layer.precision", "layer.set_output_type") for c in trt.calls)
    assert ("clear_flag", "TF32") in trt.calls and not any(c[0] == "set_flag" for c in trt.calls)
    for name in ("detector", "keypoint_head"):
        plan = _plan(out, name)
        assert plan["strongly_typed"] and "FP16" not in plan["flags"] and "TF32" not in plan["flags"]
        assert plan["pools"] == {"WORKSPACE": 4 * 2**30}
        assert meta.engines[name].built_from.endswith(f"{name}.fp16.onnx")
        assert Path(meta.details["inputs"][name]["fp16_onnx"]).is_file()
        assert all(i["dtype"] == "FLOAT" for i in plan["inputs"] + plan["outputs"])
    # The plugin library is loaded before the keypoint graph is parsed.
    assert names.index("load_library") < max(i for i, c in enumerate(trt.calls) if c[0] == "parse_from_file")
    assert ("load_library", str(fake_plugin.resolve())) in trt.calls


def test_profiles_reach_the_builder(builds):
    _, meta, out = builds["11"]
    det = _plan(out, "detector")["profile"]
    assert det == {"images": [[1, 3, 64, 64], [1, 3, 512, 512], [2, 3, 512, 512]]}
    kp = _plan(out, "keypoint_head")["profile"]
    assert kp["m2"] == [[1, 256, 16, 16], [1, 256, 128, 128], [2, 256, 128, 128]]
    assert kp["m6"] == [[1, 256, 1, 1], [1, 256, 8, 8], [2, 256, 8, 8]]
    assert kp["rois"] == [[0, 5], [16, 5], [64, 5]]
    assert meta.engines["keypoint_head"].profile["rois"].to_json() == {"min": [0, 5], "opt": [16, 5], "max": [64, 5]}


def test_tensorrt10_fp16_build_is_strongly_typed_from_the_fp16_graph(builds):
    trt, meta, out = builds["10"]
    assert ("create_network", 1 << 1) in trt.calls  # NetworkDefinitionCreationFlag.STRONGLY_TYPED = 1 in TRT 10
    assert not any(c[0] in ("layer.precision", "layer.set_output_type", "set_flag") for c in trt.calls)
    for name in ("detector", "keypoint_head"):
        assert meta.engines[name].built_from.endswith(f"{name}.fp16.onnx")
        plan = _plan(out, name)
        assert plan["strongly_typed"] and "FP16" not in plan["flags"]
    assert meta.details["typing"] == "strong" and meta.precision == "fp16" and meta.tensorrt_major == 10


def test_engines_json_is_the_typed_manifest(builds, graphs, fake_plugin):
    _, meta, out = builds["11"]
    on_disk = json.loads((out / "engines.json").read_text())
    assert on_disk == meta.to_json() and EngineManifest.read(out) == meta
    assert meta.tensorrt_version == "11.1.0.0" and meta.tensorrt_major == 11
    assert meta.details["gpu"] == FAKE_GPU and meta.precision == "fp16" and meta.details["typing"] == "strong"
    assert meta.details["fp16_policy"]["scopes"] == ["/backbone/", "/fpn/", "/context.", "/keypoint_head/"]
    assert (meta.max_size, meta.min_size, meta.max_batch, meta.max_faces, meta.min_faces) == (512, 64, 2, 64, 0)
    # Model facts from the graphs' static output dims: 3840 candidates (TensorRT's TopK limit), 256 channels, 5 points.
    assert (meta.pre_nms_topk, meta.feature_channels, meta.num_landmarks) == (3840, 256, 5)
    for name in ("detector", "keypoint_head"):
        src = Path(graphs[name])
        assert meta.details["inputs"][name]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert meta.details["inputs"][name]["fp16_conversion"]["fp16_nodes"] > 0
        engine = meta.engines[name]
        plan = out / engine.plan
        assert engine.plan_sha256 == hashlib.sha256(plan.read_bytes()).hexdigest()
        assert engine.details["plan_bytes"] == plan.stat().st_size and engine.details["build_seconds"] >= 0
    assert meta.plugin["sha256"] == hashlib.sha256(fake_plugin.read_bytes()).hexdigest()
    assert meta.plugin["creator"] == "maskface::MultiLevelRoIAlign v1"
    assert meta.details["build_seconds"] >= 0 and meta.details["built_at"].endswith("+00:00")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_fp32_build_on_tensorrt11(tmp_path, graphs, fake_plugin):
    trt, meta = _build(tmp_path, graphs, fake_plugin, "11.1.0.0", fp16=False, engines=("keypoint_head",))
    assert meta.precision == "fp32" and meta.details["fp16_policy"] is None
    assert meta.engines["keypoint_head"].built_from == str(graphs["keypoint_head"])
    assert not (tmp_path / "detector.plan").exists() and (tmp_path / "keypoint_head.plan").is_file()
    assert ("clear_flag", "TF32") in trt.calls


def test_parse_errors_list_the_parser_errors(tmp_path, graphs, fake_plugin, monkeypatch):
    # Without the plugin in the registry the custom node cannot be imported.
    monkeypatch.setattr(tensorrt_build, "load_plugin_library", lambda trt, path: None)
    with pytest.raises(OnnxParseError) as info:
        _build(tmp_path, graphs, fake_plugin, "11.1.0.0", fp16=False, engines=("keypoint_head",))
    err = info.value
    assert len(err.errors) == 1 and "MultiLevelRoIAlign" in err.errors[0]
    assert "'/pooler/MultiLevelRoIAlign'" in err.errors[0] and "code UNSUPPORTED_NODE" in err.errors[0]
    assert "1 parser error(s)" in str(err) and "[0]" in str(err)
    monkeypatch.undo()
    with pytest.raises(OnnxParseError) as info:
        _build(tmp_path, graphs, fake_plugin, "10.16.0.0", {"unsupported_ops": ("TopK", "Sigmoid")}, fp16=False,
               engines=("detector",))
    assert len(info.value.errors) == 2 and any("'/TopK' (TopK)" in e for e in info.value.errors)
    assert not (tmp_path / "engines.json").exists()


def test_plugin_problems_are_reported(tmp_path, graphs, monkeypatch):
    with pytest.raises(PluginLoadError, match="not found"):
        _build(tmp_path, graphs, tmp_path / "missing.so", "11.1.0.0", fp16=False, engines=("keypoint_head",))
    trt = make_tensorrt("11.1.0.0")
    trt.registry.load_library = lambda path: None
    with pytest.raises(PluginLoadError, match="could not load"):
        tensorrt_build.load_plugin_library(trt, __file__)
    trt = make_tensorrt("11.1.0.0")
    trt.registry.get_creator = lambda *a: None
    with pytest.raises(PluginLoadError, match="registered no maskface::MultiLevelRoIAlign"):
        tensorrt_build.load_plugin_library(trt, __file__)
    # The detector alone needs no plugin.
    trt, meta = _build(tmp_path, graphs, None, "11.1.0.0", fp16=False, engines=("detector",))
    assert meta.plugin is None and not any(c[0] == "load_library" for c in trt.calls)


def test_zero_faces_fall_back_to_one_when_refused(tmp_path, graphs, fake_plugin, standin_runtime):
    trt, meta = _build(tmp_path, graphs, fake_plugin, "11.1.0.0", {"refuse_zero_dims": True}, fp16=False)
    assert meta.engines["keypoint_head"].profile["rois"].min == (1, 5) and meta.min_faces == 1
    assert "N >= 1" in meta.engines["keypoint_head"].details["notes"][0]
    profiles = [c[1]["rois"] for c in trt.calls if c[0] == "add_optimization_profile" and "rois" in c[1]]
    assert [p[0] for p in profiles] == [(0, 5), (1, 5)]
    # The runner then answers N = 0 itself (the engine cannot take it).
    trt_graphs = TrtGraphs(tmp_path, fake_plugin)
    feats, _ = _kp_inputs(np.random.default_rng(3), 0)
    landmarks, scores = trt_graphs.keypoints([feats[f"m{k}"] for k in range(2, 7)], np.zeros((0, 5), np.float32))
    assert landmarks.shape == (0, 5, 2) and scores.shape == (0, 5)
    assert ("set_input_shape", "rois", (0, 5)) not in standin_runtime.calls


def test_build_failure_leaves_no_partial_files(tmp_path, graphs, fake_plugin):
    with pytest.raises(EngineBuildError, match="build failed on purpose"):
        _build(tmp_path, graphs, fake_plugin, "10.16.0.0", {"fail_build": True}, fp16=True)
    assert not list(tmp_path.glob("*.plan")) and not (tmp_path / "engines.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------- what TensorRT refuses


@pytest.mark.parametrize("version", ["10.16.0.0", "11.1.0.0"])
def test_conformance_refuses_topk_beyond_3840_before_tensorrt(tmp_path, graphs, detector_k5000, version):
    """NvInfer.h (10.16:8458, 11.1:8595): "Currently only values of K up to 3840 are supported." The
    graph exported before issue 11 (K = 5000) is refused by build_engines' conformance check before
    TensorRT sees it. Needs the TensorRT reference files ($MASKFACE_THIRD_PARTY, set by scripts/test.sh)."""
    from export import conformance
    from export.conformance import ConformanceError

    try:
        conformance.third_party_root()
    except conformance.ThirdPartyMissing as exc:
        pytest.skip(f"TensorRT reference files not here: {exc}")
    old_graphs = {"detector": detector_k5000, "keypoint_head": graphs["keypoint_head"]}
    with pytest.raises(ConformanceError, match=r"node '/TopK' \(TopK\): \[topk-k-limit\] K = 5000"):
        _build(tmp_path, old_graphs, None, version, fp16=False, engines=("detector",))


@pytest.mark.parametrize("version", ["10.16.0.0", "11.1.0.0"])
def test_standin_refuses_topk_beyond_3840_like_tensorrt(tmp_path, graphs, detector_k5000, version, monkeypatch):
    """Without the conformance check the (stand-in) parser refuses K = 5000 as TensorRT documents it;
    today's (K = 3840) graph builds."""
    old_graphs = {"detector": detector_k5000, "keypoint_head": graphs["keypoint_head"]}
    monkeypatch.setattr(tensorrt_build, "_check_conformance", lambda path, echo: None)
    with pytest.raises(OnnxParseError) as info:
        _build(tmp_path, old_graphs, None, version, fp16=False, engines=("detector",))
    assert len(info.value.errors) == 1 and "'/TopK' (TopK)" in info.value.errors[0] and "K = 5000 > 3840" in info.value.errors[0]
    _, meta = _build(tmp_path / "ok", graphs, None, version, fp16=False, engines=("detector",))
    assert meta.pre_nms_topk == 3840


def test_standin_refuses_invalid_profiles_like_tensorrt():
    """IOptimizationProfile::setDimensions (NvInferRuntime.h:2580-2598 of 11.1): equal ranks,
    0 <= min <= opt <= max; the binding raises, addOptimizationProfile returns -1 on an invalid one."""
    trt = make_tensorrt("11.1.0.0")
    logger = trt.Logger()
    builder = trt.Builder(logger)
    profile = builder.create_optimization_profile()
    with pytest.raises(RuntimeError, match="inconsistent"):
        profile.set_shape("rois", (0, 5), (16, 5, 1), (64, 5))
    with pytest.raises(RuntimeError, match="inconsistent"):
        profile.set_shape("rois", (-1, 5), (16, 5), (64, 5))
    profile.set_shape("rois", (32, 5), (16, 5), (64, 5))  # min > opt: refused when added
    assert builder.create_builder_config().add_optimization_profile(profile) == -1


def test_build_refuses_profiles_that_do_not_cover_the_network(tmp_path, graphs, fake_plugin, monkeypatch):
    """Every dynamic input needs a profile and a static dim must equal the network's (rule 3); the
    stand-in checks both at build time, as TensorRT does."""
    real = tensorrt_build.profile_shapes

    def without_m6(declared, ranges):
        shapes = real(declared, ranges)
        shapes.pop("m6", None)
        return shapes

    monkeypatch.setattr(tensorrt_build, "profile_shapes", without_m6)
    with pytest.raises(EngineBuildError, match="dynamic input m6 has no profile"):
        _build(tmp_path, graphs, fake_plugin, "11.1.0.0", fp16=False, engines=("keypoint_head",))

    def wrong_channels(declared, ranges):
        shapes = real(declared, ranges)
        shapes["m2"] = tuple((s[0], 128, *s[2:]) for s in shapes["m2"])  # valid ranges, wrong static C
        return shapes

    monkeypatch.setattr(tensorrt_build, "profile_shapes", wrong_channels)
    with pytest.raises(EngineBuildError, match="does not fit m2"):
        _build(tmp_path, graphs, fake_plugin, "10.16.0.0", fp16=False, engines=("keypoint_head",))
    assert not (tmp_path / "engines.json").exists()


# --------------------------------------------------------------------------------------------- runner (stand-in)


@pytest.fixture()
def standin_runtime(monkeypatch):
    """The TRT 11 stand-in as runtime on CPU memory; each test sets its executor."""
    trt = make_tensorrt("11.1.0.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine_runner, "_require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(engine_runner, "_stream_handle", lambda device: 1234)
    monkeypatch.setattr(engine_runner, "_LOADED_PLUGINS", {})
    trt.executor = FormulaExecutor(num_landmarks=5)
    return trt


def _kp_inputs(rng, num):
    feats = {f"m{k}": np.maximum(rng.standard_normal((1, 256, 128 >> k, 192 >> k)), 0).astype(np.float32) for k in range(2, 7)}
    xy = rng.uniform(0, 100, (num, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 90, (num, 2))], 1)
    return feats, np.concatenate([np.zeros((num, 1)), boxes], 1).astype(np.float32)


def _formula(feats, rois):
    """FormulaExecutor's outputs, redone by hand in loops."""
    corner = sum(float(feats[f"m{k}"][0, 0, 0, 0]) for k in range(2, 7))
    landmarks = np.zeros((len(rois), 5, 2), np.float32)
    scores = np.zeros((len(rois), 5), np.float32)
    for n, roi in enumerate(rois):
        for k in range(5):
            landmarks[n, k] = (roi[1] + k, roi[2] + corner)
            scores[n, k] = roi[0] + k / 10
    return landmarks, scores


def test_engine_runner_binds_shapes_addresses_and_zero_sized_outputs(builds, standin_runtime, fake_plugin):
    _, _, out = builds["11"]
    engine = TrtEngine(out / "keypoint_head.plan", fake_plugin)
    assert engine.input_names == ["m2", "m3", "m4", "m5", "m6", "rois"]
    assert engine.output_names == ["landmarks", "landmark_scores"]
    assert engine.profile("rois") == ((0, 5), (16, 5), (64, 5))
    rng = np.random.default_rng(0)
    for num in (0, 1, 5):
        feats, rois = _kp_inputs(rng, num)
        rois[:, 0] = np.arange(num) % 2  # batch indices reach the engine unchanged
        result = engine({**feats, "rois": torch.from_numpy(rois)})  # numpy and torch inputs
        landmarks, scores = _formula(feats, rois)
        assert tuple(result["landmarks"].shape) == (num, 5, 2) and result["landmarks"].dtype == torch.float32
        np.testing.assert_allclose(result["landmarks"].numpy(), landmarks, rtol=1e-6)
        np.testing.assert_allclose(result["landmark_scores"].numpy(), scores, rtol=1e-6)
    calls = standin_runtime.calls
    assert ("set_input_shape", "rois", (0, 5)) in calls and ("execute_async_v3", 1234) in calls
    assert ("load_library", str(fake_plugin.resolve())) in calls
    feats, rois = _kp_inputs(rng, 65)
    with pytest.raises(ValueError, match=r"outside the engine's profile \(min \(0, 5\), opt \(16, 5\), max \(64, 5\)\)"):
        engine({**feats, "rois": rois})
    with pytest.raises(KeyError, match="missing \\['rois'\\]"):
        engine(feats)


def test_engine_runner_handles_data_dependent_outputs(builds, standin_runtime, fake_plugin):
    _, _, out = builds["11"]
    standin_runtime.data_dependent = {"landmarks"}
    engine = TrtEngine(out / "keypoint_head.plan", fake_plugin)
    rng = np.random.default_rng(1)
    for num in (0, 3):
        feats, rois = _kp_inputs(rng, num)
        result = engine({**feats, "rois": rois})
        np.testing.assert_allclose(result["landmarks"].numpy(), _formula(feats, rois)[0], rtol=1e-6)
    assert ("set_output_allocator", "landmarks") in standin_runtime.calls


def test_trt_graphs_match_pytorch(builds, standin_runtime, graphs, fake_plugin):
    """TrtGraphs over stand-in engines that run the exported graphs in ONNX Runtime, against the
    PyTorch model (an independent reference: not the session the stand-in runs)."""
    _, _, out = builds["11"]
    standin_runtime.executor = OnnxExecutor(graphs["detector"], graphs["keypoint_head_portable"])
    trt_graphs = TrtGraphs(out, fake_plugin)
    assert trt_graphs.num_landmarks == 5 and trt_graphs.metadata.precision == "fp16"
    model = graphs["model"]
    images = np.random.default_rng(2).standard_normal((1, 3, 128, 192)).astype(np.float32)
    scores, boxes, feats = trt_graphs.detect(images)
    with torch.no_grad():
        t_scores, t_boxes, t_feats = model.detect_candidates(torch.from_numpy(images))
    assert isinstance(scores, np.ndarray) and scores.shape == (1, 3840)
    np.testing.assert_allclose(scores, t_scores.numpy(), atol=1e-5)
    # Candidates whose score is within 1e-5 of a neighbour may swap ranks between the two runtimes;
    # the others must be the same anchors with the same boxes.
    s = t_scores.numpy()[0]
    gaps = np.diff(s)
    clear = np.ones_like(s, bool)
    clear[1:] &= np.abs(gaps) > 1e-5
    clear[:-1] &= np.abs(gaps) > 1e-5
    assert clear.sum() >= 20
    np.testing.assert_allclose(boxes[0, clear], t_boxes.numpy()[0, clear], atol=1e-2)
    for a, b in zip(feats, t_feats):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-3, rtol=1e-3)
    rois = np.array([[0, 10, 12, 90, 100], [0, 40, 30, 120, 110]], np.float32)
    landmarks, _ = trt_graphs.keypoints(feats, rois)
    with torch.no_grad():
        t_landmarks, _, _ = model.landmarks([torch.from_numpy(f) for f in feats], torch.from_numpy(rois))
    np.testing.assert_allclose(landmarks, t_landmarks.numpy(), atol=0.05)
    as_torch = TrtGraphs((out / "detector.plan", out / "keypoint_head.plan"), fake_plugin, output="torch")
    _, _, feats_t = as_torch.detect(torch.from_numpy(images))
    landmarks_t, _ = as_torch.keypoints(feats_t, torch.from_numpy(rois))
    assert isinstance(landmarks_t, torch.Tensor) and tuple(landmarks_t.shape) == (2, 5, 2)


def test_engine_runner_errors(tmp_path, standin_runtime):
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"not a plan")
    with pytest.raises(EngineLoadError, match="could not deserialise"):
        TrtEngine(bad)
    with pytest.raises(FileNotFoundError, match="build_engines"):
        TrtEngine(tmp_path / "missing.plan")


def test_engine_runner_without_gpu_or_tensorrt_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="CUDA GPU"):
        TrtEngine(tmp_path / "detector.plan")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(TensorRTUnavailable, match="no TensorRT runtime: 'tensorrt' is not installed"):
        import_runtime()
    monkeypatch.setitem(sys.modules, "tensorrt_lean", make_tensorrt_lean())
    assert import_runtime().__name__ == "tensorrt_lean"


# --------------------------------------------------------------------------------------------- real TensorRT


def _real_status():
    if isinstance(sys.modules.get("tensorrt"), type(sys)) and hasattr(sys.modules["tensorrt"], "calls"):
        return False, "stand-in installed"
    return tensorrt_status()


@pytest.mark.skipif(not _real_status()[0], reason=f"real TensorRT build not possible here: {_real_status()[1]}")
def test_real_tensorrt_builds_engines_that_match_onnxruntime(tmp_path, graphs):  # pragma: no cover - GPU machines
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    plugin = tensorrt_build.resolve_plugin_library(None, major)
    meta = build_engines({k: graphs[k] for k in ("detector", "keypoint_head")}, tmp_path, plugin_library=plugin,
                         fp16=False, max_size=256, max_faces=16, workspace_gb=1.0)
    assert meta.tensorrt_major == major and (tmp_path / "detector.plan").is_file()
    trt_graphs = TrtGraphs(tmp_path, plugin)
    onnx_graphs = OnnxGraphs(graphs["detector"], graphs["keypoint_head_portable"])
    images = np.random.default_rng(0).standard_normal((1, 3, 128, 192)).astype(np.float32)
    got, want = trt_graphs.detect(images), onnx_graphs.detect(images)
    for a, b in zip(got[2], want[2]):
        np.testing.assert_allclose(a, b, atol=1e-3)
    for num in (0, 3):
        rois = np.array([[0, 10, 12, 90, 100], [0, 40, 30, 120, 110], [0, 5, 5, 60, 70]], np.float32)[:num]
        for a, b in zip(trt_graphs.keypoints(want[2], rois), onnx_graphs.keypoints(want[2], rois)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=0.05)


def _lean_reason() -> str | None:
    if importlib.util.find_spec("tensorrt_lean") is None:
        return "tensorrt_lean is not installed (pip install tensorrt-lean==11.4.0.106)"
    return None


@pytest.mark.skipif(_lean_reason() is not None, reason=str(_lean_reason()))
def test_real_lean_runtime_loads_the_plugin_library():
    """tensorrt_lean (a real TensorRT 11 runtime, no GPU needed) loads libmaskface_plugins.so through
    tensorrt_build.load_plugin_library and finds the creator."""
    try:
        library = tensorrt_build.resolve_plugin_library(
            None, trt_major=11, archs=os.environ.get("MASKFACE_TEST_CUDA_ARCHS", "75"))
    except PluginLoadError as exc:
        pytest.skip(f"plugin library cannot be built here: {exc}")
    script = textwrap.dedent("""
        import sys
        import tensorrt_lean
        from export.tensorrt_build import load_plugin_library
        handle = load_plugin_library(tensorrt_lean, sys.argv[1])
        creator = tensorrt_lean.get_plugin_registry().get_creator("MultiLevelRoIAlign", "1", "maskface")
        print("loaded", handle is not None, creator.plugin_namespace, creator.name, tensorrt_lean.__version__)
        assert "torch" not in sys.modules  # the build module imports neither torch nor TensorRT eagerly
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script, str(library)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    assert "loaded True maskface MultiLevelRoIAlign" in proc.stdout


# --------------------------------------------------------------------------------------------- Python API used


@pytest.mark.parametrize("version,folder", [("10.16.0.0", "10.16"), ("11.1.0.0", "11.1")])
def test_every_tensorrt_attribute_used_exists_in_that_versions_bindings(tmp_path, graphs, fake_plugin, version, folder,
                                                                       monkeypatch):
    """Build both engines and run them through TrtGraphs against the stand-in of `version`; every
    attribute export/ read on a TensorRT object or module (recorded by the stand-in) must exist in
    that version's pybind11 sources (shared/third_party/tensorrt/<folder>/python/src)."""
    from export.conformance import ThirdPartyMissing, missing_python_api

    trt, _ = _build(tmp_path, graphs, fake_plugin, version, fp16=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(engine_runner, "_require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(engine_runner, "_stream_handle", lambda device: 1234)
    monkeypatch.setattr(engine_runner, "_LOADED_PLUGINS", {})
    trt.executor = OnnxExecutor(graphs["detector"], graphs["keypoint_head_portable"])
    trt.data_dependent = {"landmarks"}  # also exercise the output-allocator path
    trt_graphs = TrtGraphs(tmp_path, fake_plugin)
    _, _, feats = trt_graphs.detect(np.zeros((1, 3, 64, 64), np.float32))
    trt_graphs.keypoints(feats, np.array([[0, 4, 4, 40, 40]], np.float32))
    used = set(trt.accessed)
    assert ("IBuilderConfig", "add_optimization_profile") in used and ("IExecutionContext", "execute_async_v3") in used
    try:
        assert missing_python_api(used, folder) == []
    except ThirdPartyMissing as exc:  # pragma: no cover - CI has ../shared/third_party
        pytest.skip(str(exc))
