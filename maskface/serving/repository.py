"""Render the Triton model repository for a target from the templates in triton_models/.

    render_repository("cpu", "runs/triton_repo", onnx_dir="artifacts/onnx", score_threshold=0.5)
    render_repository("tensorrt", "runs/triton_repo", engines_dir="artifacts/engines",
                      plugin_library="plugins/build/cmake/libmaskface_plugins.so")

triton_models/<model>/config.pbtxt.in is the single source of every config. `${name}` is a
parameter (ServingParams below); a line starting with `#@cpu ` or `#@tensorrt ` belongs to that
target only (the prefix is stripped for it and the line dropped for the other), and so do the lines
between `#@if cpu` (or `#@if tensorrt`) and `#@endif`, so the two targets share every model name,
tensor name, type and dim by construction. The cpu target's ensemble is one step, maskface_pipeline
(maskface.serving.fused_stage); its separate stages are rendered too, callable one by one. Python-backend code
(triton_models/<model>/1/model.py) is copied as is; the graphs are hard-linked (or copied) next
to it: `cpu` gets detector.onnx + keypoint_head_portable.onnx, `tensorrt` the two plans.
A manifest (maskface_repository.json) records the target, the parameters and the server
arguments the repository needs (the TensorRT plugin); maskface.serving.server reads it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import InferenceConfig, InputConfig
from ..preprocess import MAX_INPUT_PIXELS
from .manifest import DEFAULT_MAX_BATCH, EngineManifest, ManifestError

TARGETS = ("cpu", "tensorrt")
# The cpu target's precisions (docs/DEPLOYMENT.md "CPU precisions"): fp32 runs the ONNX graphs in ONNX
# Runtime; int8 (the QDQ graphs) and bf16 (the FP32 graphs, BF16 hint) run them in OpenVINO.
PRECISIONS = ("fp32", "int8", "bf16")
# The graph files each precision serves (maskface.runtimes.ort_runtime.GRAPH_FILES).
PRECISION_GRAPHS = {"fp32": "fp32", "int8": "int8", "bf16": "fp32"}
ENSEMBLE = "maskface"
STAGE_MODELS = ("maskface", "maskface_preprocess", "maskface_detector", "maskface_nms", "maskface_keypoints",
                "maskface_postprocess")
FUSED_MODEL = "maskface_pipeline"  # cpu only: the ensemble's one step there
MODELS = {"cpu": STAGE_MODELS + (FUSED_MODEL,), "tensorrt": STAGE_MODELS}
# Models that are Python-backend code per target (the rest are the ensemble and TensorRT plans).
PYTHON_MODELS = {
    "cpu": tuple(m for m in MODELS["cpu"] if m != ENSEMBLE),
    "tensorrt": ("maskface_preprocess", "maskface_nms", "maskface_postprocess"),
}
# Graph files each target puts next to a model (source file name -> file name in <model>/1/).
GRAPH_FILES = {
    "cpu": {"maskface_detector": ("detector.onnx", "detector.onnx"),
            "maskface_keypoints": ("keypoint_head_portable.onnx", "keypoint_head_portable.onnx")},
    # (precisions int8 / bf16: maskface.runtimes.ort_runtime.graph_paths picks the files in onnx_dir)
    "tensorrt": {"maskface_detector": ("detector.plan", "model.plan"),
                 "maskface_keypoints": ("keypoint_head.plan", "model.plan")},
}
ENGINES_METADATA = "engines.json"  # maskface.serving.manifest.FILE_NAME
MANIFEST = "maskface_repository.json"
TEMPLATE_NAME = "config.pbtxt.in"
TEMPLATES_ENV = "MASKFACE_TRITON_MODELS"
_TARGET_LINE = re.compile(r"^(\s*)#@(\w+) (.*)$")
_BLOCK_LINE = re.compile(r"^\s*#@(if|endif)\b\s*(\w*)\s*$")


def templates_dir() -> Path:
    """The Triton model templates: $MASKFACE_TRITON_MODELS, else those installed with the package
    (maskface/serving/triton_models, package data of a wheel), else triton_models/ of this checkout."""
    env = os.environ.get(TEMPLATES_ENV)
    installed = Path(__file__).resolve().parent / "triton_models"
    checkout = Path(__file__).resolve().parents[2] / "triton_models"
    path = Path(env) if env else installed if (installed / ENSEMBLE / TEMPLATE_NAME).is_file() else checkout
    if not (path / ENSEMBLE / TEMPLATE_NAME).is_file():
        raise FileNotFoundError(f"Triton model templates not found in {path} "
                                f"(set ${TEMPLATES_ENV} to the triton_models/ folder)")
    return path


@dataclass
class ServingParams:
    """Everything the rendered configs are parameterised by (config.pbtxt values, not code constants)."""

    # Model shape facts; None = read from the graphs / engines.json, else the defaults 5, 256, 3840.
    num_landmarks: int | None = None
    feature_channels: int | None = None
    pre_nms_topk: int | None = None
    # maskface_nms (InferenceConfig)
    score_threshold: float = InferenceConfig.score_threshold
    nms_threshold: float = InferenceConfig.nms_threshold
    max_detections: int = InferenceConfig.max_detections
    # maskface_preprocess (InputConfig + limits)
    max_side: int = 640  # longer side after resizing; 0 = keep the original size
    max_image_pixels: int = MAX_INPUT_PIXELS
    max_request_bytes: int = 32 << 20
    pixel_mean: tuple[float, float, float] = InputConfig().pixel_mean
    pixel_std: tuple[float, float, float] = InputConfig().pixel_std
    size_divisibility: int = InputConfig().size_divisibility
    # batching and instances
    detector_max_batch_size: int = DEFAULT_MAX_BATCH  # the engines' default max batch (manifest.py)
    detector_max_queue_delay_us: int = 500
    preprocess_instances: int = 2
    detector_instances: int = 1
    nms_instances: int = 1
    keypoint_instances: int = 1
    postprocess_instances: int = 1
    pipeline_instances: int = 1  # cpu target: maskface_pipeline, the ensemble's one step there
    # cpu target: fp32 (ONNX Runtime) | int8 | bf16 (OpenVINO; bf16 on CPUs with native BF16 only)
    precision: str = "fp32"
    # cpu target: intra-op threads per graph instance; 0 = the CPUs the server may run on
    # (os.sched_getaffinity) shared among the instances of that model, always set explicitly
    cpu_threads: int = 0

    @classmethod
    def from_configs(cls, inference: InferenceConfig | None = None, input_cfg: InputConfig | None = None,
                     **overrides: Any) -> "ServingParams":
        inference = inference or InferenceConfig()
        input_cfg = input_cfg or InputConfig()
        return cls(score_threshold=inference.score_threshold, nms_threshold=inference.nms_threshold,
                   max_detections=inference.max_detections, pre_nms_topk=inference.pre_nms_topk,
                   pixel_mean=tuple(input_cfg.pixel_mean), pixel_std=tuple(input_cfg.pixel_std),
                   size_divisibility=input_cfg.size_divisibility, **overrides)

    def inference_config(self) -> InferenceConfig:
        return InferenceConfig(score_threshold=self.score_threshold, pre_nms_topk=self.pre_nms_topk or InferenceConfig.pre_nms_topk,
                               nms_threshold=self.nms_threshold, max_detections=self.max_detections)

    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"serving parameter {message}")

        check(0.0 <= self.score_threshold <= 1.0, f"score_threshold={self.score_threshold} must be in [0, 1]")
        check(0.0 < self.nms_threshold <= 1.0, f"nms_threshold={self.nms_threshold} must be in (0, 1]")
        check(self.max_detections >= 1, f"max_detections={self.max_detections} must be >= 1")
        check(self.max_side == 0 or self.max_side >= self.size_divisibility,
              f"max_side={self.max_side} must be 0 (no resize) or >= size_divisibility={self.size_divisibility}")
        check(1 <= self.max_image_pixels <= MAX_INPUT_PIXELS,
              f"max_image_pixels={self.max_image_pixels} must be in 1..{MAX_INPUT_PIXELS} (maskface.preprocess)")
        check(self.max_request_bytes >= 1, f"max_request_bytes={self.max_request_bytes} must be >= 1")
        check(len(self.pixel_mean) == 3 and len(self.pixel_std) == 3 and min(self.pixel_std) > 0,
              "pixel_mean / pixel_std need 3 values (std > 0)")
        check(self.size_divisibility >= 1, "size_divisibility must be >= 1")
        check(self.detector_max_batch_size >= 1, "detector_max_batch_size must be >= 1 (dynamic batching)")
        check(self.detector_max_queue_delay_us >= 0, "detector_max_queue_delay_us must be >= 0")
        for name in ("preprocess_instances", "detector_instances", "nms_instances", "keypoint_instances",
                     "postprocess_instances", "pipeline_instances"):
            check(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        check(self.cpu_threads >= 0, "cpu_threads must be >= 0")
        check(self.precision in PRECISIONS, f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        for name in ("num_landmarks", "feature_channels", "pre_nms_topk"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name}={value} must be >= 1")

    def template_values(self) -> dict[str, str]:
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[f.name] = " ".join(repr(float(v)) for v in value) if isinstance(value, tuple) else str(value)
        return values


_FACTS_CACHE: dict[tuple, dict[str, int]] = {}


def _graph_facts_from_onnx(detector: Path | None, keypoints: Path | None) -> dict[str, int]:
    """Cached by file identity (path, size, mtime): see _read_graph_facts."""
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) if p is not None and p.is_file() else None
                for p in (detector, keypoints))
    if key not in _FACTS_CACHE:
        _FACTS_CACHE[key] = _read_graph_facts(detector, keypoints)
    return dict(_FACTS_CACHE[key])


def _read_graph_facts(detector: Path | None, keypoints: Path | None) -> dict[str, int]:
    """num_landmarks / feature_channels / pre_nms_topk of the exported graphs.

    Static output dims where the graph has them; the exporter leaves k and K symbolic, so those
    are read by running the graph once in ONNX Runtime on a 64x64 zero image and zero ROIs
    (skipped when onnxruntime is missing or the graph holds the custom TensorRT node).
    """
    facts: dict[str, int] = {}
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx comes with maskface[export]
        return facts

    def static_dim(path: Path, name: str, axis: int) -> int | None:
        model = onnx.load(str(path), load_external_data=False)
        for out in model.graph.output:
            if out.name == name:
                dims = out.type.tensor_type.shape.dim
                if len(dims) > axis and dims[axis].HasField("dim_value"):
                    return int(dims[axis].dim_value)
        return None

    def session(path: Path):
        try:
            import onnxruntime as ort

            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - no onnxruntime, or a custom op it cannot run
            return None

    import numpy as np

    strides = (4, 8, 16, 32, 64)
    if detector is not None and detector.is_file():
        for key, name in (("pre_nms_topk", "scores"), ("feature_channels", "m2")):
            value = static_dim(detector, name, 1)
            if value:
                facts[key] = value
        if len(facts) < 2 and (sess := session(detector)) is not None:
            outputs = dict(zip([o.name for o in sess.get_outputs()],
                               sess.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})))
            facts["pre_nms_topk"] = int(outputs["scores"].shape[1])
            facts["feature_channels"] = int(outputs["m2"].shape[1])
    if keypoints is not None and keypoints.is_file():
        value = static_dim(keypoints, "landmarks", 1)
        if value:
            facts["num_landmarks"] = value
        elif (sess := session(keypoints)) is not None:
            channels = facts.get("feature_channels") or static_dim(keypoints, "m2", 1) or 256
            feeds = {f"m{i}": np.zeros((1, channels, 64 // s, 64 // s), np.float32)
                     for i, s in zip(range(2, 7), strides)}
            feeds["rois"] = np.zeros((0, 5), np.float32)
            try:
                facts["num_landmarks"] = int(sess.run(["landmarks"], feeds)[0].shape[1])
            except Exception:  # noqa: BLE001 - leave it to the defaults / the caller
                pass
    return facts


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def render_config(template: str, target: str, values: Mapping[str, str]) -> str:
    """Keep the target's `#@target ` lines (prefix stripped) and `#@if target` ... `#@endif` blocks,
    drop the other target's, fill `${name}`."""
    lines = []
    block: str | None = None  # the target of the #@if block we are in
    for number, line in enumerate(template.splitlines(), 1):
        m = _BLOCK_LINE.match(line)
        if m:
            if m.group(1) == "if":
                if block is not None or m.group(2) not in TARGETS:
                    raise ValueError(f"template line {number}: {line.strip()!r} needs a known target "
                                     f"({', '.join(TARGETS)}) outside any other #@if block")
                block = m.group(2)
            else:
                if block is None:
                    raise ValueError(f"template line {number}: #@endif without #@if")
                block = None
            continue
        m = _TARGET_LINE.match(line)
        if m:
            if m.group(2) not in TARGETS:
                raise ValueError(f"unknown target marker #@{m.group(2)} in template line: {line.strip()}")
            if m.group(2) == target and block in (None, target):
                lines.append(m.group(1) + m.group(3))
            continue
        if block in (None, target):
            lines.append(line)
    if block is not None:
        raise ValueError(f"template ends inside #@if {block} (missing #@endif)")
    try:
        return string.Template("\n".join(lines) + "\n").substitute(values)
    except KeyError as exc:
        raise ValueError(f"template parameter {exc} has no value") from None


def render_repository(
    target: str,
    out_dir: str | os.PathLike,
    *,
    onnx_dir: str | os.PathLike | None = None,
    engines_dir: str | os.PathLike | None = None,
    num_landmarks: int | None = None,
    plugin_library: str | os.PathLike | None = None,
    params: ServingParams | None = None,
    require_engines: bool = True,
    templates: str | os.PathLike | None = None,
    **overrides: Any,
) -> Path:
    """Write a ready-to-serve Triton model repository for `target` ('cpu' or 'tensorrt') to out_dir.

    cpu: precision fp32 and bf16 need onnx_dir with detector.onnx and keypoint_head_portable.onnx
    (export/export_onnx.py), int8 the *_int8.onnx graphs there (export/quantize_int8.py); int8 and bf16
    need OpenVINO, and bf16 a CPU with native BF16 (maskface.runtimes.openvino_runtime).
    tensorrt: needs engines_dir with detector.plan and keypoint_head.plan (export/build_engines.py;
    engines.json there is read for the model facts and copied into the manifest). With
    require_engines=False the configs are rendered without plans (to inspect them on a machine
    without engines). `overrides` set ServingParams fields. Returns out_dir.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    params = dataclasses.replace(params or ServingParams(), **overrides)
    if num_landmarks is not None:
        params.num_landmarks = int(num_landmarks)
    params.validate()
    src_root = Path(templates) if templates is not None else templates_dir()
    out = Path(out_dir)

    sources: dict[str, Path] = {}
    missing: list[str] = []
    metadata: dict[str, Any] | None = None
    graph_files = dict(GRAPH_FILES[target])
    if target == "tensorrt" and params.precision != "fp32":
        raise ValueError(f"precision={params.precision!r} is a cpu-target parameter; the tensorrt target's "
                         "precision is fixed when the engines are built (export/build_engines.py --fp16)")
    if target == "cpu":
        if onnx_dir is None:
            raise ValueError("the cpu target needs onnx_dir (detector.onnx + keypoint_head_portable.onnx)")
        from ..runtimes.ort_runtime import graph_paths

        if params.precision != "fp32":
            from .openvino_stage import check_openvino_serving

            check_openvino_serving(params.precision)
        detector, keypoints = graph_paths(onnx_dir, PRECISION_GRAPHS[params.precision])
        if params.precision == "int8":
            from ..runtimes.cpu_features import int8_saturation_warning

            warning = int8_saturation_warning(detector)
            if warning:
                print(f"maskface serve: warning: {warning}", file=sys.stderr)
        sources = {"maskface_detector": detector, "maskface_keypoints": keypoints}
        graph_files = {model: (path.name, path.name) for model, path in sources.items()}
        facts = _graph_facts_from_onnx(sources["maskface_detector"], sources["maskface_keypoints"])
    else:
        engines = Path(engines_dir) if engines_dir is not None else None
        for model, (name, _) in GRAPH_FILES["tensorrt"].items():
            path = engines / name if engines is not None else None
            if path is not None and path.is_file():
                sources[model] = path
            elif require_engines:
                raise FileNotFoundError(f"{path or name} not found: build the engines on a GPU machine "
                                        "(export/build_engines.py --fp16) or pass require_engines=False")
            else:
                missing.append(f"{model}/1/model.plan <- {path or name}")
        facts = {}
        engine_manifest = None
        if engines is not None and (engines / ENGINES_METADATA).is_file():
            engine_manifest = EngineManifest.read(engines)  # typed and validated; ManifestError says what is wrong
        elif require_engines:
            raise ManifestError(f"{engines / ENGINES_METADATA} not found: the engines must come with the manifest "
                                "that export/build_engines.py writes beside them")
        if engine_manifest is not None:
            engine_manifest.check_serving(
                max_batch=params.detector_max_batch_size, max_side=params.max_side,
                size_divisibility=params.size_divisibility, max_detections=params.max_detections,
                pre_nms_topk=params.pre_nms_topk, num_landmarks=params.num_landmarks,
                feature_channels=params.feature_channels)
            facts = {k: getattr(engine_manifest, k) for k in ("num_landmarks", "feature_channels", "pre_nms_topk")}
            metadata = engine_manifest.to_json()
        if onnx_dir is not None:
            kp = Path(onnx_dir) / "keypoint_head_portable.onnx"  # same head; ONNX Runtime can run this one
            kp = kp if kp.is_file() else Path(onnx_dir) / "keypoint_head.onnx"
            onnx_facts = _graph_facts_from_onnx(Path(onnx_dir) / "detector.onnx", kp)
            facts = {**onnx_facts, **facts}
        if plugin_library is not None:
            plugin_library = Path(plugin_library).resolve()
            if require_engines and not plugin_library.is_file():
                raise FileNotFoundError(f"plugin library {plugin_library} not found "
                                        "(plugins/binding.py build_plugin_library)")

    defaults = (("num_landmarks", 5), ("feature_channels", 256), ("pre_nms_topk", InferenceConfig.pre_nms_topk))
    for key, default in defaults:
        given, found = getattr(params, key), facts.get(key)
        if given is not None and found is not None and given != found:
            raise ValueError(f"{key}={given} was asked for but the graphs have {found}")
        setattr(params, key, given if given is not None else found if found is not None else default)

    values = params.template_values()
    values["detector_file"] = graph_files["maskface_detector"][1]
    values["keypoint_file"] = graph_files["maskface_keypoints"][1]

    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} exists and is not a rendered MaskFace repository; refusing to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    for model in MODELS["cpu"] + MODELS["tensorrt"]:  # a repository re-rendered for the other target
        shutil.rmtree(out / model, ignore_errors=True)
    for model in MODELS[target]:
        template = src_root / model / TEMPLATE_NAME
        if not template.is_file():
            raise FileNotFoundError(f"template {template} missing")
        text = render_config(template.read_text(), target, values)
        (out / model).mkdir(parents=True)
        (out / model / "config.pbtxt").write_text(text)
        if model in PYTHON_MODELS[target]:
            code = src_root / model / "1" / "model.py"
            if not code.is_file():
                raise FileNotFoundError(f"Python-backend code {code} missing")
            (out / model / "1").mkdir()
            shutil.copy2(code, out / model / "1" / "model.py")
        # maskface_pipeline runs both graphs: they are hard-linked (not copied) into its folder too
        placed = ("maskface_detector", "maskface_keypoints") if model == FUSED_MODEL else (model,)
        for graph in (g for g in placed if g in sources):
            _place(sources[graph], out / model / "1" / graph_files[graph][1])
        (out / model / "1").mkdir(exist_ok=True)  # the ensemble and missing plans need it too

    server_args: list[str] = []
    notes: list[str] = []
    if target == "tensorrt":
        if plugin_library is not None:
            server_args.append(f"--backend-config=tensorrt,plugins={plugin_library}")
        else:
            notes.append("keypoint_head.plan needs the MultiLevelRoIAlign plugin: start tritonserver with "
                         "--backend-config=tensorrt,plugins=/path/libmaskface_plugins.so (maskface serve --plugin)")
    manifest = {
        "rendered_by": "maskface.serving.repository.render_repository",
        "target": target,
        "models": list(MODELS[target]),
        "params": dataclasses.asdict(params),
        "sources": {k: str(v.resolve()) for k, v in sources.items()},
        "plugin_library": str(plugin_library) if plugin_library is not None else None,
        "server_args": server_args,
        "missing": missing,
        "notes": notes,
        "engines_metadata": metadata,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    for model in MODELS[target]:
        parse_model_config(out / model / "config.pbtxt", strict=False)
    return out


def read_manifest(repo: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(repo) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def parse_model_config(path: str | os.PathLike, strict: bool = True):
    """config.pbtxt -> tritonclient's ModelConfig protobuf message (text_format parse).

    With strict=False, returns None when tritonclient[grpc] / protobuf are not installed.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        if strict:
            raise
        return None
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
