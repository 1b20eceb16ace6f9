"""The detector graph in OpenVINO: the CPU target's BF16 and INT8 paths (issue #15).

Why OpenVINO: on a CPU with AMX its oneDNN kernels run the detector in BF16 or INT8 at a fraction of
ONNX Runtime FP32's time, where ONNX Runtime has no BF16 convolutions and PyTorch BF16 eager is
slower (numbers: docs/DEPLOYMENT.md 5.5). It reads the same detector.onnx (and the detector_int8.onnx
QDQ graph) as ONNX Runtime, and an OpenVinoGraph is called like an onnxruntime session.

Shapes: OpenVINO compiles a graph with dynamic dimensions too, but the detector ran 1.7x slower
that way (57 vs 33 ms BF16, 640x512). An OpenVinoGraph with `static_shapes` compiles one model per
input-shape signature (0.45 s each, kept in a bounded LRU); the preprocess pads images to multiples
of 64, so a deployment sees few shapes.

The keypoint head runs in ONNX Runtime FP32 (or its INT8 graph where export/quantize_int8.py wrote one).
In OpenVINO it would need a dynamic ROI count: 4.9 ms for one face against ONNX Runtime's 1.1 ms
(demo model). And OpenVINO's BF16 hint also lowers its RoIAlign and the heatmap decoding
(coordinates): on the demo model's 400 val images that moved landmarks by 2.27 px p99 (NME 0.0838
-> 0.0900), against 1.10 px with the head in FP32.

BF16 is asked for with OpenVINO's inference-precision hint and only on a CPU that has it natively
(detected, never assumed): the CPU's flags and OpenVINO's own capability list must both say so.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..config import InferenceConfig, InputConfig
from ..pipeline import Pipeline
from .cpu_features import NATIVE_BF16_FLAGS, cpuinfo_bf16_flags, read_cpuinfo
from .ort_runtime import OrtRuntime, graph_paths, ort_session

#: precision -> the graph files it runs (ort_runtime.GRAPH_FILES); the hint: inference_hint
PRECISIONS = {"fp32": "fp32", "bf16": "fp32", "int8": "int8"}
#: Compiled static-shape models an OpenVinoGraph keeps (each holds its own weights' layout).
MAX_SHAPES = 8


class OpenVinoUnavailableError(RuntimeError):
    """OpenVINO is not installed, or the CPU lacks what the asked precision needs."""


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise OpenVinoUnavailableError(
            "OpenVINO runs the CPU BF16 / INT8 paths: pip install 'maskface[export]' (openvino)") from exc
    return openvino


@dataclass(frozen=True)
class OpenVinoBf16Support:
    native: bool
    cpu_flags: tuple[str, ...]
    openvino_bf16: bool | None  # 'BF16' in OpenVINO's CPU OPTIMIZATION_CAPABILITIES; None: not asked
    reason: str


def openvino_bf16_support(cpuinfo_text: str | None = None,
                          capabilities: Sequence[str] | None = None) -> OpenVinoBf16Support:
    """Whether OpenVINO runs BF16 natively here: the CPU reports AVX512-BF16 or AMX-BF16 and OpenVINO's
    CPU plugin lists BF16. `capabilities` defaults to asking OpenVINO (None when it is not installed)."""
    if capabilities is None:
        try:
            capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except OpenVinoUnavailableError:
            capabilities = None
    ov_bf16 = None if capabilities is None else "BF16" in capabilities
    if cpuinfo_text is None:
        cpuinfo_text = read_cpuinfo()
    flags = cpuinfo_bf16_flags(cpuinfo_text) if cpuinfo_text is not None else ()
    if ov_bf16 is None:
        return OpenVinoBf16Support(False, flags, None, "OpenVINO is not installed")
    if cpuinfo_text is None:
        return OpenVinoBf16Support(False, (), ov_bf16, "no /proc/cpuinfo to read the CPU's BF16 flags from; "
                                   "not assuming native BF16")
    if not flags:
        return OpenVinoBf16Support(False, (), ov_bf16, f"the CPU reports none of {', '.join(NATIVE_BF16_FLAGS)} "
                                   "(BF16 would be emulated, slower than FP32)")
    if not ov_bf16:
        return OpenVinoBf16Support(False, flags, False, "OpenVINO's CPU plugin does not list BF16")
    return OpenVinoBf16Support(True, flags, True, f"the CPU reports {', '.join(flags)} and OpenVINO lists BF16")


def inference_hint(precision: str, support: OpenVinoBf16Support | None = None) -> str:
    """OpenVINO's inference-precision hint of the detector at `precision`: bf16 for bf16; for int8, bf16 where
    OpenVINO runs BF16 natively (`support`, detected when None), else f32; f32 for fp32.
    Why int8 takes BF16 there: its floating-point layers (the unclipped activations' convs of
    export/quantize_int8.py's default graph, GroupNorms, detection head) then run in BF16 at the same drift
    (demo model, Zen 5 EPYC, 400 val images, box / landmark p99 at FP32's anchors 1.92 / 1.17 px with f32,
    1.93 / 1.12 with bf16) and the detector in 0.44x of ONNX Runtime FP32's time instead of 0.60x (30 paired
    rounds; docs/DEPLOYMENT.md 5.4). Without native BF16 the hint would emulate BF16, slower than FP32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        return "bf16" if (support or openvino_bf16_support()).native else "f32"
    return "bf16" if precision == "bf16" else "f32"


def require_openvino_precision(precision: str, support: OpenVinoBf16Support | None = None) -> None:
    """Raise OpenVinoUnavailableError (saying what to use instead) unless `precision` can run here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    import_openvino()
    if precision == "bf16":
        support = support or openvino_bf16_support()
        if not support.native:
            raise OpenVinoUnavailableError(
                f"BF16 inference needs a CPU with native BF16 (AVX512-BF16 or AMX): {support.reason}. "
                "Use fp32 or int8 instead.")


class OpenVinoGraph:
    """One ONNX graph compiled by OpenVINO's CPU plugin, called like an onnxruntime session:
    run(output_names or None, {input name: array}) -> list of float32 arrays. group_norm_moments (on by
    default): the GroupNorms inside the graph are read as per-channel moments (group_norm_graph says why);
    profile: OpenVINO's performance counters on, read per run with operation_times()."""

    def __init__(self, path: str | Path, hint: str = "f32", threads: int | None = None,
                 static_shapes: bool = False, max_shapes: int = MAX_SHAPES, profile: bool = False,
                 group_norm_moments: bool = True):
        ov = import_openvino()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX graph {path} not found: run `python export/build_engines.py` first")
        self.path, self.hint, self.threads = path, hint, threads
        self.static_shapes, self.max_shapes, self.profile = static_shapes, max_shapes, profile
        self._last_request = None
        self._core = ov.Core()
        self._model = self._read(path, group_norm_moments)
        self.input_names = [p.get_any_name() for p in self._model.inputs]
        self.output_names = [p.get_any_name() for p in self._model.outputs]
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        if not static_shapes:
            self._compiled[()] = self._compile(self._model)

    def _read(self, path: Path, group_norm_moments: bool):
        """The graph as OpenVINO runs it: with group_norm_moments, the GroupNorms that stay inside it as
        per-channel moments (group_norm_graph says why)."""
        if group_norm_moments:
            import onnx

            from .group_norm_graph import group_norms_as_moments

            model = onnx.load(str(path))
            if group_norms_as_moments(model):
                return self._core.read_model(model.SerializeToString())
        return self._core.read_model(str(path))

    def _compile(self, model):
        config = {"INFERENCE_PRECISION_HINT": self.hint, "PERFORMANCE_HINT": "LATENCY"}
        if self.profile:
            config["PERF_COUNT"] = True
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return self._core.compile_model(model, "CPU", config).create_infer_request()

    def _request(self, feeds: Mapping[str, np.ndarray]):
        if not self.static_shapes:
            return self._compiled[()]
        key = tuple(tuple(feeds[name].shape) for name in self.input_names)
        request = self._compiled.get(key)
        if request is None:
            model = self._model.clone()
            model.reshape({name: list(shape) for name, shape in zip(self.input_names, key)})
            request = self._compiled[key] = self._compile(model)
            while len(self._compiled) > self.max_shapes:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return request

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # copies: the request reuses its output memory on the next call
        return [np.array(view, np.float32) for view in self.run_transient(output_names, feeds)]

    def run_transient(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """run() without copying the outputs: views of the request's memory, which its next call at
        these input shapes overwrites (maskface.runtimes.reused_outputs says why)."""
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise KeyError(f"{self.path.name}: missing inputs {sorted(missing)}")
        arrays = {name: np.ascontiguousarray(feeds[name], np.float32) for name in self.input_names}
        request = self._request(arrays)
        # shared: no copy in (the arrays outlive this synchronous call) and none into infer's own result,
        # which is not used
        request.infer(arrays, share_inputs=True, share_outputs=True)
        self._last_request = request
        wanted = list(output_names) if output_names else self.output_names
        return [request.get_tensor(name).data for name in wanted]

    def operation_times(self) -> list[tuple[str, str, float]]:
        """(node type, kernel, ms) of each operation OpenVINO executed in the last run; needs profile=True."""
        if not self.profile:
            raise RuntimeError("operation times need OpenVinoGraph(..., profile=True)")
        if self._last_request is None:
            raise RuntimeError("no run yet: call run() first")
        return [(info.node_type, info.exec_type, info.real_time.total_seconds() * 1e3)
                for info in self._last_request.profiling_info if info.status == info.Status.EXECUTED]


class OpenVinoRuntime(OrtRuntime):
    """The pipeline's detect / select / keypoints (maskface.pipeline.Runtime) with the detector in
    OpenVINO: `precision` bf16 (FP32 graph, BF16 inference hint), int8 (the QDQ graph of
    export/quantize_int8.py; its floating-point layers in BF16 where the CPU has it natively, else FP32:
    inference_hint) or fp32; the keypoint head in ONNX Runtime (module docstring). `folder`
    holds the graphs (ort_runtime.graph_paths names them); stop_spinning as in ort_runtime.ort_session."""

    def __init__(self, folder: str | Path, precision: str = "bf16", threads: int | None = None,
                 stop_spinning: bool = True):
        require_openvino_precision(precision)
        detector, keypoint_head = graph_paths(folder, PRECISIONS[precision])
        if precision == "int8":
            from .cpu_features import int8_saturation_warning

            warning = int8_saturation_warning(detector)
            if warning:
                warnings.warn(warning, stacklevel=2)
        self.precision = precision
        self.detector = OpenVinoGraph(detector, inference_hint(precision), threads, static_shapes=True)
        self.keypoint_head = ort_session(keypoint_head, threads, stop_spinning=stop_spinning)
        self._detector_transient = self.detector.run_transient


class OpenVinoPredictor(Pipeline):
    """The pipeline on an OpenVinoRuntime; the same contract as maskface.engine.predictor.Predictor."""

    def __init__(self, runtime: OpenVinoRuntime, inference: InferenceConfig | None = None,
                 input_cfg: InputConfig | None = None, max_side: int | None = 640):
        super().__init__(runtime, inference, input_cfg, max_side)
        self.graphs = runtime
