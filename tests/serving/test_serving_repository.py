"""The rendered model repositories, read back with tritonclient's ModelConfig protobuf (text_format).

The tensorrt target is checked without a GPU or TensorRT: configs, tensor names, dims, batching,
instance kinds and the plugin wiring; the cpu target must declare the very same tensors.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from maskface.serving.repository import (
    FUSED_MODEL, MANIFEST, MODELS, STAGE_MODELS, ServingParams, parse_model_config, read_manifest, render_config,
    render_repository,
)

pytest.importorskip("tritonclient.grpc.model_config_pb2")
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

FP32, FP64, INT32, UINT8 = mc.TYPE_FP32, mc.TYPE_FP64, mc.TYPE_INT32, mc.TYPE_UINT8


def configs(repo: Path) -> dict[str, "mc.ModelConfig"]:
    return {name: parse_model_config(repo / name / "config.pbtxt") for name in MODELS[read_manifest(repo)["target"]]}


def tensors(entries) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in entries}


def params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def write_engine_manifest(engines: Path, num_landmarks=19, feature_channels=256, max_batch=8, max_size=1024,
                          max_faces=750) -> None:
    """engines.json as export/build_engines.py writes it (the typed EngineManifest)."""
    from maskface.serving.manifest import EngineEntry, EngineManifest, Profile

    images = Profile((1, 3, 64, 64), (1, 3, 512, 640), (max_batch, 3, max_size, max_size))
    rois = Profile((0, 5), (16, 5), (max_faces, 5))
    EngineManifest(
        tensorrt_version="10.16.0.0", precision="fp16", max_batch=max_batch, max_size=max_size, max_faces=max_faces,
        num_landmarks=num_landmarks, feature_channels=feature_channels, pre_nms_topk=3840,
        engines={"detector": EngineEntry("detector.plan", "0" * 64, {"images": images}),
                 "keypoint_head": EngineEntry("keypoint_head.plan", "1" * 64, {"rois": rois})},
        plugin={"path": "libmaskface_plugins.so"}).write(engines)


@pytest.fixture
def fake_engines(tmp_path) -> Path:
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "detector.plan").write_bytes(b"not really a plan")
    (engines / "keypoint_head.plan").write_bytes(b"not really a plan either")
    write_engine_manifest(engines, num_landmarks=19)
    return engines


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "libmaskface_plugins.so"
    path.write_bytes(b"\x7fELF")
    return path


def test_tensorrt_target_configs(fake_engines, plugin, tmp_path):
    repo = render_repository("tensorrt", tmp_path / "trt", engines_dir=fake_engines, plugin_library=plugin,
                             score_threshold=0.6, max_detections=100, detector_max_batch_size=8,
                             detector_instances=2, max_image_pixels=4_000_000)
    cfg = configs(repo)
    k = 19  # from engines.json
    c = 256  # from engines.json

    det, kp = cfg["maskface_detector"], cfg["maskface_keypoints"]
    for model in (det, kp):
        assert model.platform == "tensorrt_plan" and model.backend == ""
        assert model.default_model_filename == "model.plan"
        assert [g.kind for g in model.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert (repo / model.name / "1" / "model.plan").is_file()
        assert not (repo / model.name / "1" / "model.py").exists()
    assert det.instance_group[0].count == 2 and kp.instance_group[0].count == 1
    # detector: batched (dynamic batcher), dims without the batch dimension
    assert det.max_batch_size == 8 and det.HasField("dynamic_batching")
    assert tensors(det.input) == {"images": (FP32, (3, -1, -1))}
    assert tensors(det.output) == {"scores": (FP32, (3840,)), "boxes": (FP32, (3840, 4)),
                                   **{f"m{i}": (FP32, (c, -1, -1)) for i in range(2, 7)}}
    # keypoints: ragged ROI count -> not batched by Triton, full shapes
    assert kp.max_batch_size == 0 and not kp.HasField("dynamic_batching")
    assert tensors(kp.input) == {**{f"m{i}": (FP32, (-1, c, -1, -1)) for i in range(2, 7)}, "rois": (FP32, (-1, 5))}
    assert tensors(kp.output) == {"landmarks": (FP32, (-1, k, 2)), "landmark_scores": (FP32, (-1, k))}

    # Python-backend stages are the same on both targets
    for name in ("maskface_preprocess", "maskface_nms", "maskface_postprocess"):
        assert cfg[name].backend == "python" and cfg[name].platform == ""
        assert cfg[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert (repo / name / "1" / "model.py").is_file()
    assert params(cfg["maskface_nms"])["score_threshold"] == "0.6"
    assert params(cfg["maskface_nms"])["max_detections"] == "100"
    assert params(cfg["maskface_preprocess"])["max_image_pixels"] == "4000000"

    # ensemble
    ens = cfg["maskface"]
    assert ens.platform == "ensemble" and ens.max_batch_size == 0
    assert tensors(ens.input) == {"IMAGE": (UINT8, (-1,))}
    assert tensors(ens.output) == {"BOXES": (FP32, (-1, 4)), "SCORES": (FP32, (-1,)),
                                   "LANDMARKS": (FP32, (-1, k, 2)), "LANDMARK_SCORES": (FP32, (-1, k))}
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        "maskface_preprocess", "maskface_detector", "maskface_nms", "maskface_keypoints", "maskface_postprocess"]

    # plugin wiring: the server argument is in the manifest and reaches tritonserver's command line
    manifest = read_manifest(repo)
    assert manifest["target"] == "tensorrt"
    assert manifest["server_args"] == [f"--backend-config=tensorrt,plugins={plugin.resolve()}"]
    assert manifest["engines_metadata"]["precision"] == "fp16"
    assert "--backend-config=tensorrt,plugins=" in (repo / "maskface_keypoints" / "config.pbtxt").read_text()
    from maskface.serving.server import ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"configs checked; no tritonserver to build a command line with: {exc}")
    server = TritonServer(repo)
    try:
        server.http_port, server.grpc_port = 18000, 18001
        command = server.command()
    finally:
        server.cleanup()
    assert f"--backend-config=tensorrt,plugins={plugin.resolve()}" in command
    assert "--disable-auto-complete-config" in command and "--allow-gpu-metrics=false" in command
    assert "--http-address=127.0.0.1" in command and "--grpc-address=127.0.0.1" in command
    assert any(a.startswith("--backend-config=python,shm-region-prefix-name=maskface") for a in command)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_ensemble_wiring_is_consistent(target, onnx_dir, fake_engines, plugin, tmp_path):
    """Every step input is the ensemble input or an earlier step's output, every step maps only the
    tensors its model declares, all of a model's inputs are fed, and the ensemble outputs are produced."""
    if target == "tensorrt":
        repo = render_repository("tensorrt", tmp_path / "trt", engines_dir=fake_engines, plugin_library=plugin)
    else:
        repo = render_repository("cpu", tmp_path / "cpu", onnx_dir=onnx_dir)
    cfg = configs(repo)
    ens = cfg["maskface"]
    available = {t.name: None for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = cfg[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}, step.model_name
        assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
        for value in step.input_map.values():
            assert value in available, f"{step.model_name} reads {value} before it exists"
        available.update({v: step.model_name for v in step.output_map.values()})
    assert {t.name for t in ens.output} <= set(available)


def test_cpu_and_tensorrt_targets_declare_the_same_tensors(onnx_dir, fake_engines, plugin, tmp_path):
    write_engine_manifest(fake_engines, num_landmarks=5, feature_channels=64)  # the facts of the ONNX graphs given
    trt = configs(render_repository("tensorrt", tmp_path / "trt", engines_dir=fake_engines, plugin_library=plugin,
                                    onnx_dir=onnx_dir))
    cpu_repo = render_repository("cpu", tmp_path / "cpu", onnx_dir=onnx_dir, num_landmarks=5)
    cpu = configs(cpu_repo)
    assert set(cpu) - set(trt) == {FUSED_MODEL} and set(trt) == set(STAGE_MODELS)
    for name in STAGE_MODELS:
        assert tensors(cpu[name].input) == tensors(trt[name].input), name
        assert tensors(cpu[name].output) == tensors(trt[name].output), name
        assert cpu[name].max_batch_size == trt[name].max_batch_size, name
    for name in ("maskface_detector", "maskface_keypoints"):
        assert cpu[name].backend == "python" and cpu[name].platform == ""
        assert cpu[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        graph = params(cpu[name])["model_file"]
        assert (cpu_repo / name / "1" / graph).is_file() and (cpu_repo / name / "1" / "model.py").is_file()
    assert params(cpu["maskface_keypoints"])["model_file"] == "keypoint_head_portable.onnx"
    assert params(cpu["maskface_detector"])["precision"] == "fp32" and params(cpu["maskface_detector"])["cpu_threads"] == "0"
    assert read_manifest(cpu_repo)["server_args"] == []
    # the cpu ensemble is one step: maskface_pipeline, with the ensemble's own tensors and both graphs
    assert [s.model_name for s in cpu["maskface"].ensemble_scheduling.step] == [FUSED_MODEL]
    fused = cpu[FUSED_MODEL]
    assert tensors(fused.input) == tensors(cpu["maskface"].input)
    assert tensors(fused.output) == tensors(cpu["maskface"].output)
    assert fused.backend == "python" and fused.max_batch_size == 0
    assert (params(fused)["detector_file"], params(fused)["keypoint_file"]) == (
        "detector.onnx", "keypoint_head_portable.onnx")
    for graph in ("detector.onnx", "keypoint_head_portable.onnx"):
        assert (cpu_repo / FUSED_MODEL / "1" / graph).samefile(onnx_dir / graph)  # hard-linked, not copied
    for name in MODELS["cpu"]:
        text = (cpu_repo / name / "config.pbtxt").read_text()
        assert "${" not in text and "#@" not in text


def test_render_reads_facts_from_the_graphs_and_refuses_conflicts(onnx_dir, tmp_path):
    repo = render_repository("cpu", tmp_path / "cpu", onnx_dir=onnx_dir)
    facts = read_manifest(repo)["params"]
    assert (facts["num_landmarks"], facts["feature_channels"], facts["pre_nms_topk"]) == (5, 64, 3840)
    with pytest.raises(ValueError, match="num_landmarks=19 was asked for but the graphs have 5"):
        render_repository("cpu", tmp_path / "cpu", onnx_dir=onnx_dir, num_landmarks=19)


def test_render_errors(onnx_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown target"):
        render_repository("onnxruntime", tmp_path / "x", onnx_dir=onnx_dir)
    with pytest.raises(FileNotFoundError, match="export them first"):
        render_repository("cpu", tmp_path / "x", onnx_dir=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="build the engines"):
        render_repository("tensorrt", tmp_path / "x", engines_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="score_threshold"):
        render_repository("cpu", tmp_path / "x", onnx_dir=onnx_dir, score_threshold=1.5)
    with pytest.raises(ValueError, match="max_image_pixels"):
        render_repository("cpu", tmp_path / "x", onnx_dir=onnx_dir, max_image_pixels=10**12)
    with pytest.raises(ValueError, match="preprocess_instances"):
        render_repository("cpu", tmp_path / "x", onnx_dir=onnx_dir, params=ServingParams(preprocess_instances=0))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        render_repository("cpu", foreign, onnx_dir=onnx_dir)
    assert (foreign / "keep.txt").read_text() == "user data"
    # rendering again over a rendered repository is fine (and replaces it)
    repo = render_repository("cpu", tmp_path / "again", onnx_dir=onnx_dir)
    render_repository("cpu", repo, onnx_dir=onnx_dir, max_detections=7)
    assert params(parse_model_config(repo / "maskface_nms" / "config.pbtxt"))["max_detections"] == "7"
    assert (repo / MANIFEST).is_file()


def test_tensorrt_configs_render_without_engines(tmp_path):
    repo = render_repository("tensorrt", tmp_path / "trt", require_engines=False)
    manifest = read_manifest(repo)
    assert len(manifest["missing"]) == 2 and manifest["server_args"] == []
    assert any("--backend-config=tensorrt,plugins=" in note for note in manifest["notes"])
    assert parse_model_config(repo / "maskface_keypoints" / "config.pbtxt").platform == "tensorrt_plan"


def test_target_markers():
    template = 'name: "x"\n#@cpu backend: "python"\n#@tensorrt platform: "tensorrt_plan"\n  #@cpu count: ${n}\n'
    assert render_config(template, "cpu", {"n": "3"}) == 'name: "x"\nbackend: "python"\n  count: 3\n'
    assert render_config(template, "tensorrt", {"n": "3"}) == 'name: "x"\nplatform: "tensorrt_plan"\n'
    with pytest.raises(ValueError, match="unknown target marker"):
        render_config("#@gpu x: 1\n", "cpu", {})
    with pytest.raises(ValueError, match="has no value"):
        render_config("x: ${missing}\n", "cpu", {})
    blocks = 'a\n#@if cpu\nb\n  #@tensorrt c\n  #@cpu d\n#@endif\n#@if tensorrt\ne\n#@endif\nf\n'
    assert render_config(blocks, "cpu", {}) == "a\nb\n  d\nf\n"
    assert render_config(blocks, "tensorrt", {}) == "a\ne\nf\n"
    for broken, match in (("#@if cpu\nx\n", "missing #@endif"), ("#@endif\n", "without #@if"),
                          ("#@if gpu\n#@endif\n", "known target"), ("#@if cpu\n#@if cpu\n", "known target")):
        with pytest.raises(ValueError, match=match):
            render_config(broken, "cpu", {})


def test_engine_profile_limits_from_engines_json(fake_engines, plugin, tmp_path):
    write_engine_manifest(fake_engines, max_batch=2)
    with pytest.raises(ValueError, match="exceeds the detector engine's max batch 2"):
        render_repository("tensorrt", tmp_path / "a", engines_dir=fake_engines, plugin_library=plugin,
                          detector_max_batch_size=4)
    write_engine_manifest(fake_engines, max_batch=8, max_size=640)
    with pytest.raises(ValueError, match=r"pads to 1024 px, beyond the detector engine's profile \(640 px\)"):
        render_repository("tensorrt", tmp_path / "b", engines_dir=fake_engines, plugin_library=plugin, max_side=1000)
    repo = render_repository("tensorrt", tmp_path / "c", engines_dir=fake_engines, plugin_library=plugin,
                             max_side=640, detector_max_batch_size=8)
    assert parse_model_config(repo / "maskface_detector" / "config.pbtxt").max_batch_size == 8


def test_cpu_precision_picks_the_graphs_by_one_parameter(onnx_dir, tmp_path):
    """int8 serves the *_int8.onnx graphs (export/quantize_int8.py names) under the same contract."""
    import shutil

    graphs = tmp_path / "graphs"
    shutil.copytree(onnx_dir, graphs)
    with pytest.raises(FileNotFoundError, match="quantize_int8.py"):
        render_repository("cpu", tmp_path / "missing", onnx_dir=graphs, precision="int8")
    shutil.copy(graphs / "detector.onnx", graphs / "detector_int8.onnx")
    kept = configs(render_repository("cpu", tmp_path / "kp32", onnx_dir=graphs, precision="int8"))
    # a keypoint head left in FP32 (quantize_int8.py's default) is served beside the INT8 detector
    assert params(kept["maskface_keypoints"])["model_file"] == "keypoint_head_portable.onnx"
    assert params(kept["maskface_detector"])["model_file"] == "detector_int8.onnx"
    shutil.copy(graphs / "keypoint_head_portable.onnx", graphs / "keypoint_head_portable_int8.onnx")
    fp32 = configs(render_repository("cpu", tmp_path / "fp32", onnx_dir=graphs))
    repo = render_repository("cpu", tmp_path / "int8", onnx_dir=graphs, precision="int8")
    int8 = configs(repo)
    for name in MODELS["cpu"]:
        assert tensors(int8[name].input) == tensors(fp32[name].input), name
        assert tensors(int8[name].output) == tensors(fp32[name].output), name
    for name, graph in (("maskface_detector", "detector_int8.onnx"),
                        ("maskface_keypoints", "keypoint_head_portable_int8.onnx")):
        assert params(int8[name])["model_file"] == graph and params(int8[name])["precision"] == "int8"
        assert (repo / name / "1" / graph).is_file() and (repo / FUSED_MODEL / "1" / graph).is_file()
    assert (params(int8[FUSED_MODEL])["detector_file"], params(int8[FUSED_MODEL])["keypoint_file"]) == (
        "detector_int8.onnx", "keypoint_head_portable_int8.onnx")
    assert params(int8[FUSED_MODEL])["precision"] == "int8"
    assert read_manifest(repo)["params"]["precision"] == "int8"
    assert read_manifest(repo)["sources"]["maskface_detector"].endswith("detector_int8.onnx")


def test_precision_errors(onnx_dir, fake_engines, plugin, tmp_path):
    with pytest.raises(ValueError, match="precision='fp16' must be one of fp32, int8, bf16"):
        render_repository("cpu", tmp_path / "a", onnx_dir=onnx_dir, precision="fp16")
    with pytest.raises(ValueError, match="cpu-target parameter"):
        render_repository("tensorrt", tmp_path / "b", engines_dir=fake_engines, plugin_library=plugin, precision="int8")
    with pytest.raises(FileNotFoundError, match="quantise them first"):
        render_repository("cpu", tmp_path / "c", onnx_dir=onnx_dir, precision="int8")


def test_bf16_is_refused_where_the_cpu_lacks_it(onnx_dir, tmp_path, monkeypatch):
    """A config error before anything is written, naming the precisions that would work."""
    pytest.importorskip("openvino")
    from maskface.runtimes import openvino_runtime as ovr

    no_bf16 = "flags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    monkeypatch.setattr(ovr, "read_cpuinfo", lambda: no_bf16)
    with pytest.raises(ValueError, match="precision bf16: .*native BF16.*Use fp32 or int8"):
        render_repository("cpu", tmp_path / "d", onnx_dir=onnx_dir, precision="bf16")
    assert not (tmp_path / "d").exists()


def test_threads_are_explicit_and_shared_among_instances(monkeypatch):
    from maskface.serving import stages

    monkeypatch.setattr(stages, "available_cpus", lambda: 16)
    assert stages.threads_per_instance(0, 1) == 16
    assert stages.threads_per_instance(0, 3) == 5  # 16 // 3
    assert stages.threads_per_instance(0, 32) == 1
    assert stages.threads_per_instance(6, 3) == 6  # given explicitly: taken as is
    with pytest.raises(ValueError, match="cpu_threads=-1"):
        stages.threads_per_instance(-1, 1)
    assert stages.instance_count({"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 3}]}) == 5
    assert stages.instance_count({}) == 1


def test_stage_sessions_get_the_thread_count(onnx_dir, tmp_path, monkeypatch):
    """The rendered config reaches ONNX Runtime: intra-op threads = CPUs // instances, set explicitly."""
    import json

    from maskface.serving import stages

    monkeypatch.setattr(stages, "available_cpus", lambda: 4)
    repo = render_repository("cpu", tmp_path / "cpu", onnx_dir=onnx_dir, detector_instances=2)
    cfg = configs(repo)["maskface_detector"]
    from google.protobuf import json_format

    model_config = json.loads(json_format.MessageToJson(cfg, preserving_proto_field_name=True))
    args = {"model_repository": str(repo / "maskface_detector"), "model_version": "1"}
    graph = stages.graph_model(args, model_config, "detector")
    assert isinstance(graph, stages.OnnxModel) and graph.threads == 2
    assert graph.session.get_session_options().intra_op_num_threads == 2
    kp_cfg = json.loads(json_format.MessageToJson(configs(repo)["maskface_keypoints"], preserving_proto_field_name=True))
    kp_args = {"model_repository": str(repo / "maskface_keypoints"), "model_version": "1"}
    keypoints = stages.graph_model(kp_args, kp_cfg, "keypoints")
    for session in (graph.session, keypoints.session):
        options = session.get_session_options()
        # spin-waiting within a run (ONNX Runtime's default, not overridden), stopped when the run returns
        with pytest.raises(RuntimeError, match="does not have configuration"):
            options.get_session_config_entry("session.intra_op.allow_spinning")
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
