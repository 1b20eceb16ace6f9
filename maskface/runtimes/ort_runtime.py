"""The exported graphs (detector.onnx + a portable keypoint_head graph) in ONNX Runtime as a pipeline
runtime. Used by the export parity checks, the benchmarks and, through maskface.serving.stages,
the `cpu` Triton target. Imports neither torch nor onnxruntime until they are needed."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import InferenceConfig, InputConfig
from ..contracts import KEYPOINT_OUTPUTS
from ..pipeline import Pipeline, keypoint_feeds, select_candidates
from .reused_outputs import ReusedOutputs


#: The graph files of the ONNX Runtime paths, as export/export_onnx.py and export/quantize_int8.py name them.
GRAPH_FILES = {"fp32": ("detector.onnx", "keypoint_head_portable.onnx"),
               "int8": ("detector_int8.onnx", "keypoint_head_portable_int8.onnx")}


def graph_paths(folder: str | Path, precision: str = "fp32") -> tuple[Path, Path]:
    """(detector, keypoint head) of `precision` in `folder`. The INT8 path keeps the FP32 keypoint head
    when it was not quantised (export/quantize_int8.py quantises it only with --keypoint-head-int8).
    Raises FileNotFoundError saying which command writes what is missing."""
    if precision not in GRAPH_FILES:
        raise ValueError(f"precision {precision!r} has no ONNX graphs; choose one of {', '.join(GRAPH_FILES)}")
    folder = Path(folder)
    detector, keypoints = (folder / name for name in GRAPH_FILES[precision])
    if precision == "int8" and not keypoints.is_file():
        keypoints = folder / GRAPH_FILES["fp32"][1]
    how = {"fp32": "export them first (python export/build_engines.py, or export/export_onnx.py --portable)",
           "int8": f"quantise them first (python export/quantize_int8.py --out {folder})"}[precision]
    for path in (detector, keypoints):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {how}")
    return detector, keypoints


#: ONNX Runtime session option: worker threads stop spin-waiting when a run returns.
FORCE_SPINNING_STOP = "session.force_spinning_stop"


def ort_session(path: str | Path | bytes, threads: int | None = None, providers: Sequence[str] | None = None,
                optimize: bool = True, stop_spinning: bool = True, profile_prefix: str | Path | None = None,
                quiet: bool = False):
    """path: a graph file, or a serialised ModelProto (bytes: a graph edited in memory). optimize=False: ONNX Runtime's graph optimisations off (keeps nodes such as fp16.py's storing
    Identities that the optimiser would remove). stop_spinning=False: ONNX Runtime's default (the
    benchmark's baseline). profile_prefix: ONNX Runtime's profiler on, its JSON written at
    session.end_profiling() to a file named from this prefix (benchmarks/op_profile.py). quiet: only
    ONNX Runtime's errors are logged (an edited graph's unused initialisers are warned of otherwise)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("onnxruntime is needed to run the ONNX graphs: pip install 'maskface[export]'") from exc
    if not isinstance(path, bytes):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX graph {path} not found: run `python export/build_engines.py` first")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # The workers spin-wait between the parallel sections of a run (fewer wake-ups), but by default go on
    # spinning after it returns and take a core from what comes next: the NMS, the other graph, the next
    # request, another runtime (benchmarks/ort_spinning.py measures it).
    if stop_spinning:
        options.add_session_config_entry(FORCE_SPINNING_STOP, "1")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if quiet:
        options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=list(providers or ["CPUExecutionProvider"]))


class OrtRuntime:
    """detector.onnx + a portable keypoint_head graph in ONNX Runtime (numpy in, numpy out); each a file or a
    serialised graph (ort_session)."""

    def __init__(self, detector: str | Path | bytes, keypoint_head: str | Path | bytes, threads: int | None = None,
                 providers: Sequence[str] | None = None, optimize: bool = True, stop_spinning: bool = True):
        self.detector = ort_session(detector, threads, providers, optimize, stop_spinning)
        self.keypoint_head = ort_session(keypoint_head, threads, providers, optimize, stop_spinning)
        self._detector_transient = ReusedOutputs(self.detector).run_transient

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        scores, boxes, *features = self.detector.run(None, {"images": np.ascontiguousarray(images, np.float32)})
        return scores, boxes, features

    def detect_transient(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """detect() into arrays this runtime keeps (maskface.runtimes.reused_outputs): its next
        detect_transient at the same input shape overwrites them. What the pipeline calls."""
        scores, boxes, *features = self._detector_transient(None, {"images": np.ascontiguousarray(images, np.float32)})
        return scores, boxes, features

    def select(self, scores: np.ndarray, boxes: np.ndarray, inference: InferenceConfig) -> np.ndarray:
        return select_candidates(scores, boxes, inference)

    def keypoints(self, features: Sequence[np.ndarray], rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        landmarks, scores = self.keypoint_head.run(list(KEYPOINT_OUTPUTS), keypoint_feeds(features, rois))
        return landmarks, scores


class OnnxPredictor(Pipeline):
    """The pipeline on an OrtRuntime; the same contract as maskface.engine.predictor.Predictor."""

    def __init__(self, graphs: OrtRuntime, inference: InferenceConfig | None = None,
                 input_cfg: InputConfig | None = None, max_side: int | None = 640):
        super().__init__(graphs, inference, input_cfg, max_side)
        self.graphs = graphs
