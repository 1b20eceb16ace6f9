"""TensorRT engines from the exported ONNX graphs (docs/CONTRACTS.md, docs/ARCHITECTURE.md §5-6; issue 5).

    from export.tensorrt_build import tensorrt_status, build_engines
    ok, reason = tensorrt_status()
    if ok:
        meta = build_engines(onnx_paths, "artifacts/engines", plugin_library=lib, fp16=True)

writes ``detector.plan``, ``keypoint_head.plan`` and ``engines.json`` (TensorRT version, GPU,
precision, profiles, sha256 of the ONNX inputs and of the plugin library, build times), each
through a temporary file and a rename.

Precision: one path for TensorRT 10 and 11, a strongly typed network. FP16 = the FP16 ONNX graph
written by export/fp16.py (FP16 backbone / FPN / context / keypoint conv tower, FP32 GroupNorm, heads,
Sigmoid / TopK / box decoding, RoIAlign and heatmap decoding; FP32 graph inputs / outputs), so the
graph itself says which layer runs in which type. Evidence from the headers (shared/third_party):

* TRT 10.16 NvInfer.h:10467-10468 ``kFP16``: "\\deprecated Deprecated in TensorRT 10.12. Superseded
  by strong typing." -- the same note on kOBEY_PRECISION_CONSTRAINTS (:10508-10509) and on
  ILayer::setPrecision / setOutputType (:701, :789); weak typing is the deprecated path.
* TRT 10.16 NvInfer.h:12109-12113 ``kSTRONGLY_TYPED = 1``: "Mark the network to be strongly typed
  ... Setting layer precision and layer output types is not allowed" (not deprecated in 10.x).
* TRT 11.1 NvInfer.h:11469-11471 ``kSTRONGLY_TYPED``: "Deprecated in TensorRT 11.0. Strongly typed mode
  is always enabled. This flag is retained for API compatibility but is ignored."; BuilderFlag has no
  FP16 / OBEY_PRECISION_CONSTRAINTS at all (python/src/infer/pyCore.cpp:1599-1623 of 11.1).

So TRT 10 gets NetworkDefinitionCreationFlag.STRONGLY_TYPED and TRT 11 no flag; neither sets a
precision flag. FP32 engines clear BuilderFlag.TF32 unless ``tf32=True`` (an FP32 engine is a reference).

Optimisation profiles (one per engine) come from the image-size range: images
[1, 3, 64, 64] / [opt_batch, 3, 512, 640] / [max_batch, 3, max_size, max_size] (opt_size (480, 640),
a 640x480 photo, is rounded up to the 64-multiple preprocessing pads it to, and clamped to
max_size); the keypoint
engine's maps m<k> [B, C, ceil(H / 2^k), ceil(W / 2^k)] over the same range, and rois [N, 5] with
N from ``min_faces`` (0: the graph appends one padding ROI itself, so N = 0 is legal; if TensorRT
refuses a zero dimension in the profile, 1 is used and recorded) over 16 to ``max_faces``.

The plugin library (plugins/, ``libmaskface_plugins.so``) is loaded into the plugin registry before
the keypoint graph is parsed: the parser turns the ``MultiLevelRoIAlign`` node into the plugin by op
type + the ``plugin_namespace`` / ``plugin_version`` attributes. Parse errors list every parser error.

Nothing here imports TensorRT at module import time.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maskface.contracts import PLUGIN_NAMESPACE, PLUGIN_OP_NAME, PLUGIN_OP_VERSION
from maskface.io_utils import atomic_write_bytes, sha256_file
from maskface.serving.manifest import (
    DEFAULT_MAX_BATCH, DEFAULT_MAX_FACES, DEFAULT_MAX_SIZE, EngineEntry, EngineManifest, Profile,
)

from .engine_profiles import (  # noqa: F401  (re-exported: callers and tests use tensorrt_build.X)
    IMAGE_INPUT, ROIS_INPUT, SIZE_MULTIPLE, ProfileRanges, ProfileShapes, Shape, _profiles_json, profile_shapes,
)
from .plugin_loading import (  # noqa: F401
    PluginLoadError, _tensorrt_headers_for_major, load_plugin_library, resolve_plugin_library,
)
from .plugin_loading import version_major as _version_major

SUPPORTED_MAJORS = (10, 11)
DETECTOR = "detector"
KEYPOINT_HEAD = "keypoint_head"
ENGINE_NAMES = (DETECTOR, KEYPOINT_HEAD)
PLAN_FILES = {DETECTOR: "detector.plan", KEYPOINT_HEAD: "keypoint_head.plan"}
METADATA_FILE = "engines.json"
DEFAULT_OUT_DIR = Path("artifacts/engines")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (with a builder) or a CUDA GPU is missing; the message says which."""


class OnnxParseError(RuntimeError):
    """TensorRT's ONNX parser refused a graph; ``errors`` holds one line per parser error."""

    def __init__(self, path: Path, errors: list[str]):
        self.path = Path(path)
        self.errors = list(errors)
        lines = "\n".join(f"  [{i}] {e}" for i, e in enumerate(self.errors)) or "  (the parser reported no error detail)"
        super().__init__(f"TensorRT could not parse {path} ({len(self.errors)} parser error(s)):\n{lines}")


class EngineBuildError(RuntimeError):
    """build_serialized_network failed, or a profile was refused; the message holds TensorRT's log."""


# --------------------------------------------------------------------------------------------- status


def import_tensorrt():
    """The ``tensorrt`` module with a builder and an ONNX parser, else TensorRTUnavailable(reason)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        reason = f"Python module 'tensorrt' is not installed ({exc})"
        if importlib.util.find_spec("tensorrt_lean") is not None:
            reason += "; only 'tensorrt_lean' is, a runtime without builder or ONNX parser"
        raise TensorRTUnavailable(reason) from exc
    except Exception as exc:  # a broken install: missing libnvinfer, wrong CUDA, ...
        raise TensorRTUnavailable(f"'import tensorrt' failed: {type(exc).__name__}: {exc}") from exc
    version = getattr(trt, "__version__", "?")
    missing = [name for name in ("Builder", "OnnxParser") if not hasattr(trt, name)]
    if missing:
        raise TensorRTUnavailable(
            f"tensorrt {version} has no {' / '.join(missing)}: a runtime-only (lean / dispatch) package cannot build engines")
    if _version_major(version) not in SUPPORTED_MAJORS:
        raise TensorRTUnavailable(f"tensorrt {version} is not supported (major versions {SUPPORTED_MAJORS})")
    return trt


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        return "torch is not installed, so no CUDA device can be checked"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None


def tensorrt_status(require_gpu: bool = True) -> tuple[bool, str]:
    """(available, reason): TensorRT with a builder, a supported major version and (by default) a
    CUDA GPU. The reason names what is missing, or what was found."""
    try:
        trt = import_tensorrt()
    except TensorRTUnavailable as exc:
        return False, str(exc)
    if require_gpu:
        missing = _cuda_reason()
        if missing:
            return False, f"tensorrt {trt.__version__} is installed but there is {missing}"
        return True, f"tensorrt {trt.__version__} on {gpu_info().get('name', 'a CUDA GPU')}"
    return True, f"tensorrt {trt.__version__}"


def gpu_info() -> dict[str, Any]:
    """Name, compute capability, memory and CUDA version of GPU 0 (empty without one)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                "count": torch.cuda.device_count()}
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - depends on the driver
        return {"error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class PrecisionPlan:
    """How the requested precision is built (the same for TensorRT 10 and 11: strong typing)."""

    precision: str  # "fp16" | "fp32"
    onnx_variant: str  # "fp16" (export/fp16.py graph) | "fp32"
    cleared_flags: tuple[str, ...]  # BuilderFlag names cleared


def precision_plan(major: int, fp16: bool, tf32: bool = False) -> PrecisionPlan:
    """The graph and flags for TensorRT `major` (10 or 11); see the module docstring for the evidence."""
    if major not in SUPPORTED_MAJORS:
        raise ValueError(f"TensorRT major version {major} is not supported ({SUPPORTED_MAJORS})")
    cleared = () if tf32 else ("TF32",)
    return PrecisionPlan("fp16", "fp16", cleared) if fp16 else PrecisionPlan("fp32", "fp32", cleared)


def network_flags(trt, major: int) -> int:
    """create_network flags of a strongly typed network: TRT 10 sets STRONGLY_TYPED; TRT 11 networks
    are always strongly typed and its flag is deprecated and ignored, so none is passed."""
    if major >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


# --------------------------------------------------------------------------------------------- helpers


def _make_logger(trt, echo: Callable[[str], None] | None, verbose: bool):
    """A trt.ILogger that keeps every message (errors go into exceptions) and echoes warnings+."""

    class _RecordingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[int, str]] = []

        def log(self, severity, msg):
            level = int(severity)
            self.messages.append((level, str(msg)))
            if echo is not None and (level <= 2 or (verbose and level <= 3)):
                echo(f"[TensorRT {getattr(severity, 'name', level)}] {msg}")

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level <= 1]

    return _RecordingLogger()


def _error_field(error, attr: str, default=None):
    fn = getattr(error, attr, None)
    try:
        return fn() if callable(fn) else default
    except Exception:  # noqa: BLE001  # pragma: no cover - the bindings differ between versions
        return default


def _parser_errors(parser) -> list[str]:
    """One line per parser error: description, node index / name / operator, code, source location."""
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)

        def get(attr, default=None, error=e):
            return _error_field(error, attr, default)

        parts = [str(get("desc", e))]
        node, name, op = get("node", -1), get("node_name", ""), get("node_operator", "")
        if (node is not None and node >= 0) or name:
            parts.append(f"node {node} {name!r} ({op})")
        code = get("code")
        if code is not None:
            parts.append(f"code {getattr(code, 'name', code)}")
        where = get("file")
        if where:
            parts.append(f"at {where}:{get('line', '?')} {get('func', '')}".rstrip())
        errors.append("; ".join(parts))
    return errors


def _network_input_shapes(network) -> dict[str, tuple[int, ...]]:
    return {network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
            for i in range(network.num_inputs)}


# --------------------------------------------------------------------------------------------- build


def build_engine(
    trt, onnx_path: Path, plan_path: Path, ranges: ProfileRanges, plan: PrecisionPlan, *, major: int,
    workspace_bytes: int, plugin_library: Path | None = None,
    embed_plugin: bool = False, version_compatible: bool = False, echo: Callable[[str], None] | None = print,
    verbose: bool = False,
) -> dict[str, Any]:
    """Parse one ONNX graph, set its profile and flags, build and write the plan. Returns its metadata."""
    logger = _make_logger(trt, echo, verbose)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise OnnxParseError(onnx_path, _parser_errors(parser) or logger.errors())

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    for flag in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, flag):
            config.clear_flag(getattr(trt.BuilderFlag, flag))
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if embed_plugin and plugin_library is not None:
        config.plugins_to_serialize = [str(plugin_library)]

    declared = _network_input_shapes(network)
    notes: list[str] = []
    profile_errors: list[str] = []
    shapes = profile_shapes(declared, ranges)
    index = _add_profile(builder, config, shapes, profile_errors)
    if index < 0 and ROIS_INPUT in shapes and ranges.min_faces == 0:
        # The graph accepts N = 0 (it pads one ROI itself); a TensorRT that refuses zero-sized
        # profile dimensions gets N >= 1 and the caller must skip the engine for zero faces.
        notes.append("TensorRT refused N = 0 in the rois profile; the engine accepts N >= 1")
        ranges = _replace(ranges, min_faces=1)
        shapes = profile_shapes(declared, ranges)
        index = _add_profile(builder, config, shapes, profile_errors)
    if index < 0:
        raise EngineBuildError(f"{onnx_path.name}: TensorRT refused the optimisation profile {_profiles_json(shapes)}:\n"
                               + "\n".join(profile_errors + logger.errors()))

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"building {onnx_path.name} failed:\n" + "\n".join(logger.errors() or ["(no error logged)"]))
    data = memoryview(serialized)
    atomic_write_bytes(plan_path, data)
    info: dict[str, Any] = {
        "plan": plan_path.name, "plan_sha256": sha256_file(plan_path), "plan_bytes": plan_path.stat().st_size,
        "built_from": str(onnx_path), "built_from_sha256": sha256_file(onnx_path),
        "profile": _profiles_json(shapes), "build_seconds": round(time.perf_counter() - start, 3),
        "num_layers": int(network.num_layers),
        "inputs": {n: list(s) for n, s in declared.items()},
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "warnings": [m for level, m in logger.messages if level == 2][:50],
    }
    if notes:
        info["notes"] = notes
    return info


def _replace(ranges: ProfileRanges, **changes) -> ProfileRanges:
    values = asdict(ranges)
    values.update(changes)
    values["opt_size"] = tuple(values["opt_size"])
    return ProfileRanges(**values)


def _add_profile(builder, config, shapes: ProfileShapes, errors: list[str] | None = None) -> int:
    """Index of the added profile, or -1 when TensorRT refuses it (some versions raise instead)."""
    profile = builder.create_optimization_profile()
    try:
        for name, (mn, opt, mx) in shapes.items():
            profile.set_shape(name, mn, opt, mx)
        return int(config.add_optimization_profile(profile))
    except (RuntimeError, ValueError, TypeError) as exc:
        if errors is not None:
            errors.append(f"{type(exc).__name__}: {exc}")
        return -1


def graph_facts(onnx_paths: Mapping[str, str | os.PathLike]) -> dict[str, int]:
    """pre_nms_topk, feature_channels and num_landmarks: the static output dims the exporter writes
    (scores [B, k], m2 [B, C, h, w], landmarks [N, K, 2])."""
    import onnx

    wanted = {"detector": (("scores", 1, "pre_nms_topk"), ("m2", 1, "feature_channels")),
              "keypoint_head": (("landmarks", 1, "num_landmarks"),)}
    facts: dict[str, int] = {}
    for graph, items in wanted.items():
        if graph not in onnx_paths:
            continue
        outputs = {o.name: o.type.tensor_type.shape.dim for o in onnx.load(str(onnx_paths[graph]),
                                                                           load_external_data=False).graph.output}
        for tensor, axis, key in items:
            dims = outputs.get(tensor)
            if dims is None or len(dims) <= axis or not dims[axis].HasField("dim_value"):
                raise ValueError(f"{onnx_paths[graph]}: output {tensor!r} has no static size on axis {axis} "
                                 "(re-export with export/export_onnx.py)")
            facts[key] = int(dims[axis].dim_value)
    return facts


def build_engines(
    onnx_paths: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    plugin_library: str | os.PathLike | None = None,
    fp16: bool = True,
    max_size: int = DEFAULT_MAX_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_faces: int = DEFAULT_MAX_FACES,
    *,
    opt_size: tuple[int, int] = (480, 640),
    opt_batch: int = 1,
    opt_faces: int = 16,
    min_faces: int = 0,
    min_size: int = SIZE_MULTIPLE,
    workspace_gb: float = 4.0,
    tf32: bool = False,
    fp16_policy=None,
    fp16_dir: str | os.PathLike | None = None,
    engines: Sequence[str] = ENGINE_NAMES,
    embed_plugin: bool = False,
    version_compatible: bool = False,
    require_gpu: bool = True,
    verbose: bool = False,
    echo: Callable[[str], None] | None = print,
    model_info: Mapping[str, Any] | None = None,
) -> EngineManifest:
    """Build detector.plan and keypoint_head.plan from ``onnx_paths`` (export_all's dict: keys
    "detector" and "keypoint_head", the custom-node graph) into ``out_dir`` and write engines.json
    (maskface.serving.manifest.EngineManifest, which serving reads).

    fp16: FP16 engines (strongly typed FP16 graph, see the module docstring); max_size: largest image
    side (multiple of 64); max_batch; max_faces: largest ROI count of the keypoint engine. The
    defaults are those serving uses. Returns the manifest written. Raises TensorRTUnavailable,
    PluginLoadError, OnnxParseError, EngineBuildError. ``model_info`` goes to engines.json details.
    """
    from export import fp16 as fp16_mod

    trt = import_tensorrt()
    if require_gpu:
        missing = _cuda_reason()
        if missing:
            raise TensorRTUnavailable(f"tensorrt {trt.__version__} is installed but there is {missing}")
    major = _version_major(trt.__version__)
    ranges = ProfileRanges(max_size=max_size, max_batch=max_batch, max_faces=max_faces, min_size=min_size,
                           opt_size=tuple(opt_size), opt_batch=opt_batch, min_faces=min_faces, opt_faces=opt_faces)
    plan = precision_plan(major, fp16, tf32)
    policy = fp16_policy or fp16_mod.Fp16Policy()
    unknown = [e for e in engines if e not in ENGINE_NAMES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; known: {ENGINE_NAMES}")
    missing_onnx = [e for e in engines if e not in onnx_paths]
    if missing_onnx:
        raise ValueError(f"onnx_paths has no {missing_onnx} (keys: {sorted(onnx_paths)})")
    for name in engines:
        if not Path(onnx_paths[name]).is_file():
            raise FileNotFoundError(f"ONNX graph {onnx_paths[name]} not found")
    facts = graph_facts({k: v for k, v in onnx_paths.items() if k in ENGINE_NAMES})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    plugin_path = None
    plugin_meta = None
    if KEYPOINT_HEAD in engines:
        plugin_path = resolve_plugin_library(plugin_library, major)
        load_plugin_library(trt, plugin_path)
        plugin_meta = {"path": str(plugin_path), "sha256": sha256_file(plugin_path), "embedded": bool(embed_plugin),
                       "creator": f"{PLUGIN_NAMESPACE}::{PLUGIN_OP_NAME} v{PLUGIN_OP_VERSION}"}
        if echo:
            echo(f"tensorrt_build: loaded plugin library {plugin_path}")

    results: dict[str, Any] = {}
    inputs_meta: dict[str, Any] = {}
    for name in engines:
        src = Path(onnx_paths[name])
        inputs_meta[name] = {"onnx": str(src), "sha256": sha256_file(src)}
        build_src = src
        if plan.onnx_variant == "fp16":
            build_src = fp16_mod.fp16_path(src) if fp16_dir is None else Path(fp16_dir) / fp16_mod.fp16_path(src).name
            report = fp16_mod.convert_file(src, build_src, policy)
            inputs_meta[name]["fp16_onnx"] = str(build_src)
            inputs_meta[name]["fp16_onnx_sha256"] = sha256_file(build_src)
            inputs_meta[name]["fp16_conversion"] = {k: v for k, v in report.to_dict().items() if k != "policy"}
        _check_conformance(build_src, echo)
        if echo:
            echo(f"tensorrt_build: building {PLAN_FILES[name]} from {build_src} ({plan.precision}, strongly typed)")
        results[name] = build_engine(
            trt, build_src, out / PLAN_FILES[name], ranges, plan, major=major,
            workspace_bytes=int(workspace_gb * 2**30), plugin_library=plugin_path, embed_plugin=embed_plugin,
            version_compatible=version_compatible, echo=echo, verbose=verbose,
        )

    def fact(key: str) -> int:
        return facts[key] if key in facts else _fact(model_info, key)

    resolved = ranges.resolved()
    notes = [n for info in results.values() for n in info.get("notes", [])]
    min_faces_built = 1 if any("N >= 1" in n for n in notes) else resolved.min_faces
    entries = {}
    for name, info in results.items():
        entry = dict(info)
        entry["profile"] = {k: Profile.from_json(v, f"{name}.{k}") for k, v in info["profile"].items()}
        entries[name] = EngineEntry(**{k: entry.pop(k) for k in ("plan", "plan_sha256", "profile", "built_from",
                                                                 "built_from_sha256")}, details=entry)
    manifest = EngineManifest(
        tensorrt_version=trt.__version__, precision=plan.precision, max_batch=resolved.max_batch,
        max_size=resolved.max_size, max_faces=resolved.max_faces, min_size=resolved.min_size,
        min_faces=min_faces_built, num_landmarks=fact("num_landmarks"), feature_channels=fact("feature_channels"),
        pre_nms_topk=fact("pre_nms_topk"),
        engines=entries, plugin=plugin_meta,
        details={
            "tensorrt_major": major, "gpu": gpu_info(), "typing": "strong", "precision_plan": asdict(plan),
            "fp16_policy": policy.to_dict() if plan.precision == "fp16" else None,
            "workspace_gb": workspace_gb, "version_compatible": bool(version_compatible), "inputs": inputs_meta,
            "build_seconds": round(time.perf_counter() - started, 3),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {"python": sys.version.split()[0], "platform": platform.platform()},
            "model": dict(model_info or {}),
        },
    )
    manifest = EngineManifest.from_json(manifest.to_json())  # exactly what engines.json holds
    manifest.write(out)
    if echo:
        echo(f"tensorrt_build: wrote {', '.join(PLAN_FILES[n] for n in engines)} and {METADATA_FILE} to {out}")
    return manifest


def _check_conformance(path: Path, echo: Callable[[str], None] | None) -> None:
    """The graph TensorRT is about to parse (FP16 variant included) against TensorRT's documented limits
    (export/conformance.py): ConformanceError names node and rule. Skipped, with a note, where the
    reference files are not on this machine."""
    from export.conformance import ThirdPartyMissing, require_conformance

    try:
        require_conformance([path])
    except ThirdPartyMissing as exc:
        if echo:
            echo(f"tensorrt_build: conformance of {path.name} not checked: {exc}")


def _fact(model_info: Mapping[str, Any] | None, key: str) -> int:
    """A model fact the built graphs do not carry (only one engine built): from model_info."""
    if model_info and isinstance(model_info.get(key), int):
        return int(model_info[key])
    raise ValueError(f"{key} is unknown: build both engines, or pass model_info={{'{key}': ...}}")


def read_metadata(engine_dir: str | os.PathLike) -> EngineManifest:
    """engines.json of a build folder (validated)."""
    return EngineManifest.read(engine_dir)
