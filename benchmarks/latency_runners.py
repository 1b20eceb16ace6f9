"""The latency benchmark's runners (one per backend) and how each backend is made ready: ONNX export
cached by a key of (config, seed, checkpoint, versions), TensorRT engines built or skipped with the reason.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import maskface
from maskface.config import InferenceConfig, MaskFaceConfig
from maskface.io_utils import atomic_write_json, sha256_file
from maskface.modeling.maskface import MaskFace
from maskface.pipeline import pipeline_detect, rois_of, select_candidates
from maskface.postprocess import PAD_SCORE, top_candidates

CUDA_ONLY = ("torch-fp16", "torch-fp16-cudagraph", "tensorrt-fp16")
CPU_ONLY = ("onnxruntime-int8", "openvino-int8", "openvino-bf16", "torch-bf16", "triton-cpu")
ONNX_EXPORT_VERSION = 1  # bump when the way the benchmark exports changes


def input_hw(size: tuple[int, int], cfg: MaskFaceConfig) -> tuple[int, int]:
    """Network input (H, W) of a WIDTHxHEIGHT image: padded up to multiples of size_divisibility."""
    div = cfg.input.size_divisibility
    w, h = size
    return -(-h // div) * div, -(-w // div) * div


# ------------------------------------------------------------------------------------------------ runners


class Skip(Exception):
    """A backend that cannot run here; the message is the reason."""


# The runners time the pipeline's runtimes (maskface.pipeline.Runtime: detect / select / keypoints) stage
# by stage; they add only what timing needs (input placement, benchmark variants of the PyTorch
# detector: FP16, channels-last, CUDA graph; ROI choice for F faces; synchronisation).


class TorchRunner:
    """The model's own stages (detect_candidates / the pipeline's select / landmarks) on torch tensors."""

    engine = "PyTorch eager"

    def __init__(self, model: MaskFace, device: str, half: bool = False, channels_last: bool = False,
                 cuda_graph: bool = False):
        self.model = model
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple[int, ...], _TrunkGraph] = {}
        self.checks: dict[str, float] = {}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image[None]).to(self.device, self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def detect(self, x: torch.Tensor):
        if self.cuda_graph:
            key = tuple(x.shape)
            if key not in self._graphs:
                self._graphs[key] = _TrunkGraph(self.model, x)
                self._check_graph(self._graphs[key], x)
            return self._graphs[key](x)
        return self.model.detect_candidates(x)

    def _check_graph(self, graph: "_TrunkGraph", x: torch.Tensor) -> None:
        """The replayed graph must give the eager scores (same kernels, so equal up to cuDNN choices)."""
        want, _, _ = self.model.detect_candidates(x)
        got, _, _ = graph(x)
        self.checks["cudagraph_vs_eager_scores_max_abs"] = float((got.float() - want.float()).abs().max())

    def select(self, scores, boxes, inference: InferenceConfig):
        return select_candidates(scores, boxes, inference)

    def keypoints(self, features, rois):
        points, scores, _ = self.model.landmarks(features, rois)
        return points, scores

    def rois(self, boxes, index):
        return rois_of(boxes[index])

    def first(self, n: int):
        return torch.arange(n, device=self.device)

    def fill(self, kept, num_candidates: int, n: int):
        """kept indices first, then the best candidates not kept, n in all (kept[:n] when enough survive)."""
        if kept.numel() >= n:
            return kept[:n]
        free = torch.ones(num_candidates, dtype=torch.bool, device=kept.device)
        free[kept] = False
        return torch.cat([kept, torch.nonzero(free, as_tuple=True)[0][: n - kept.numel()]])

    def num_real(self, scores) -> int:
        return int((scores > PAD_SCORE).sum())

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        pass

    def pipeline(self):
        """The whole pipeline (decode, preprocess, detect, select, keypoints, original pixels) as a
        callable on encoded image bytes, or None where the benchmark has no such path."""
        if self.cuda_graph or self.dtype != torch.float32:
            return None
        from maskface.engine.predictor import Predictor

        return _on_bytes(Predictor(self.model, device=self.device, max_side=None))


def _on_bytes(predictor):
    from maskface.preprocess import decode_image

    return lambda data: predictor(decode_image(data))


class RuntimeRunner(TorchRunner):
    """A pipeline runtime that takes numpy images and returns torch tensors (maskface.runtimes.Bf16Runtime)."""

    def __init__(self, runtime, model: MaskFace, engine: str, predictor):
        super().__init__(model, "cpu")
        self.runtime = runtime
        self.engine = engine
        self._predictor = predictor

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[None], np.float32)

    def detect(self, x):
        return self.runtime.detect(x)

    def keypoints(self, features, rois):
        return self.runtime.keypoints(features, rois)

    def pipeline(self):
        return _on_bytes(self._predictor)


class _TrunkGraph:
    """CUDA graph of the detector trunk (context_features + detection head convs) at one input shape.

    The tail of detect_candidates (anchors, top-k over all anchors, box decoding) runs eagerly on the
    graph's static outputs, through the same maskface.postprocess.top_candidates the model uses; the anchors
    of the fixed shape are computed once.
    """

    def __init__(self, model: MaskFace, example: torch.Tensor, warmup: int = 3):
        self.model = model
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up cuDNN / allocator outside the capture
            for _ in range(warmup):
                model.detection_head(model.context_features(self.static_in))
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            features = model.context_features(self.static_in)
            logits, deltas = model.detection_head(features)
        self.outputs = (logits, deltas, features)
        self.anchors = model.anchors(features)

    def __call__(self, images: torch.Tensor):
        self.static_in.copy_(images)
        self.graph.replay()
        logits, deltas, features = self.outputs
        cfg = self.model.cfg
        scores, boxes = top_candidates(logits, deltas, self.anchors, self.model.box_coder,
                                       cfg.inference.pre_nms_topk, images.shape[-2:])
        return scores, boxes, features


class TrtRunner(TorchRunner):
    """TensorRT engines through export/engine_runner.TensorRTRuntime (torch CUDA tensors in and out)."""

    def __init__(self, graphs, model: MaskFace, engine: str):
        super().__init__(model, "cuda")
        self.graphs = graphs
        self.engine = engine

    def detect(self, x):
        return self.graphs.detect(x)

    def keypoints(self, features, rois):
        return self.graphs.keypoints(features, rois)

    def pipeline(self):
        return None  # timed stage by stage only


class OrtRunner:
    """maskface.runtimes.ort_runtime.OrtRuntime (or TritonRuntime: the same numpy contract) on numpy arrays."""

    def __init__(self, graphs, engine: str, inference: InferenceConfig | None = None, input_cfg=None):
        self.graphs = graphs
        self.engine = engine
        self.checks: dict[str, float] = {}
        self._configs = (inference, input_cfg)

    def pipeline(self):
        from maskface.runtimes.ort_runtime import OnnxPredictor

        return _on_bytes(OnnxPredictor(self.graphs, *self._configs, max_side=None))

    def close(self) -> None:
        pass

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[None], np.float32)

    def detect(self, x):
        return pipeline_detect(self.graphs)(x)  # as the pipeline calls it

    def select(self, scores, boxes, inference: InferenceConfig):
        return self.graphs.select(scores, boxes, inference)

    def keypoints(self, features, rois):
        return self.graphs.keypoints(features, rois)

    def rois(self, boxes, index):
        return rois_of(np.asarray(boxes)[index])

    def first(self, n: int):
        return np.arange(n)

    def fill(self, kept, num_candidates: int, n: int):
        if len(kept) >= n:
            return kept[:n]
        free = np.ones(num_candidates, bool)
        free[kept] = False
        return np.concatenate([kept, np.nonzero(free)[0][: n - len(kept)]]).astype(np.int64)

    def num_real(self, scores) -> int:
        return int((np.asarray(scores) > PAD_SCORE).sum())

    def sync(self) -> None:
        pass


class TritonRunner(OrtRunner):
    """The Triton cpu target, served for real: stages through maskface_detector / maskface_keypoints
    (TritonRuntime: the context maps travel to the client and back, which the ensemble avoids) and
    the whole pipeline through the `maskface` ensemble (what a client sees)."""

    def __init__(self, server, graphs, engine: str):
        super().__init__(graphs, engine)
        self.server = server

    def pipeline(self):
        from maskface.serving.client import MaskFaceClient

        client = MaskFaceClient(self.server.http_url)
        return lambda data: client.detect(np.frombuffer(data, np.uint8))

    def close(self) -> None:
        report = self.server.stop()
        if report.clean:
            self.server.cleanup()


def triton_runner(model: MaskFace, onnx_paths: Callable[[], dict[str, Path]], cache_dir: Path, threads: int,
                  log: Callable[[str], None]) -> TritonRunner:
    """Render the cpu target from the benchmark's FP32 graphs and start tritonserver on free loopback ports."""
    try:
        from maskface.runtimes.triton_runtime import TritonRuntime
        from maskface.serving.repository import ServingParams, render_repository
        from maskface.serving.server import ServerError, TritonServer, find_tritonserver

        find_tritonserver()
    except (ImportError, Exception) as exc:  # noqa: BLE001 - no tritonclient / no tritonserver: a reason
        raise Skip(f"no Triton here: {exc}") from exc
    paths = onnx_paths()
    # The in-process rows run 1 image at a time with `threads` intra-op threads; the server gets the same.
    params = ServingParams.from_configs(model.cfg.inference, model.cfg.input, max_side=0, cpu_threads=threads,
                                        preprocess_instances=1)
    repo = render_repository("cpu", cache_dir / "triton_repo" / model.cfg.name, onnx_dir=paths["detector"].parent,
                             params=params)
    server = TritonServer(repo)
    log(f"latency: starting tritonserver on the cpu target ({repo}) ...")
    try:
        server.start()
    except ServerError as exc:
        raise Skip(f"tritonserver did not start: {exc}") from exc
    import tritonclient

    return TritonRunner(server, TritonRuntime(server.http_url),
                        f"Triton (tritonclient {getattr(tritonclient, '__version__', '?')}), cpu target, "
                        f"ONNX Runtime graphs, {threads} threads; the ensemble is one process, maskface_pipeline")


# ------------------------------------------------------------------------------------------------ backends


def model_key(cfg: MaskFaceConfig, seed: int, checkpoint: str | None) -> str:
    """Hash of what decides the exported graphs: config, seed / checkpoint content, opset, versions."""
    try:
        from export.export_onnx import DEFAULT_OPSET
    except ImportError:  # onnx missing: the key is only used where exporting works
        DEFAULT_OPSET = None
    payload = {"config": cfg.to_dict(), "seed": None if checkpoint else seed,
               "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None, "opset": DEFAULT_OPSET,
               "torch": torch.__version__, "maskface": maskface.__version__, "export_version": ONNX_EXPORT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_onnx_export(model: MaskFace, key: str, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """export.export_onnx.export_all into cache_dir/onnx/<preset>, reused when its export_meta.json has `key`."""
    try:
        from export.export_onnx import export_all
    except ImportError as exc:
        raise Skip(f"cannot export ONNX here ({exc})") from exc
    folder = cache_dir / "onnx" / model.cfg.name
    meta_path = folder / "export_meta.json"
    names = {"detector": "detector.onnx", "keypoint_head": "keypoint_head.onnx",
             "keypoint_head_portable": "keypoint_head_portable.onnx"}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    paths = {k: folder / v for k, v in names.items()}
    if meta.get("key") == key and all(p.is_file() for p in paths.values()):
        log(f"latency: reusing ONNX graphs in {folder} (key {key})")
        return paths
    log(f"latency: exporting ONNX graphs of {model.cfg.name} to {folder} (key {key}) ...")
    t0 = time.perf_counter()
    meta_path.unlink(missing_ok=True)
    paths = {k: Path(v) for k, v in export_all(model, folder).items()}
    atomic_write_json(meta_path, {"key": key, "preset": model.cfg.name, "files": {k: p.name for k, p in paths.items()}})
    log(f"latency: exported in {time.perf_counter() - t0:.1f} s")
    return paths


def tensorrt_runner(model: MaskFace, key: str, cache_dir: Path, onnx_paths: Callable[[], dict[str, Path]],
                    max_side: int, max_faces: int, log: Callable[[str], None]) -> TrtRunner:
    try:
        from export.tensorrt_build import build_engines, tensorrt_status
    except ImportError as exc:
        raise Skip(f"export/tensorrt_build.py is not importable here ({exc})") from exc
    available, reason = tensorrt_status()
    if not available:
        raise Skip(f"TensorRT not available: {reason}")
    try:
        from export.engine_runner import TensorRTRuntime

        folder = cache_dir / "engines" / f"{model.cfg.name}-fp16-{max_side}-{max_faces}"
        meta_path = folder / "bench_meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("key") != key:
            log(f"latency: building FP16 TensorRT engines in {folder} ...")
            # plugin_library=None: built against the headers of the runtime's TensorRT major version.
            metadata = build_engines(onnx_paths(), folder, plugin_library=None, fp16=True, max_size=max_side,
                                     max_batch=1, max_faces=max_faces, workspace_gb=4.0)
            meta = {"key": key, "metadata": metadata.to_json()}
            atomic_write_json(meta_path, meta)
        version = (meta.get("metadata") or {}).get("tensorrt_version", "?")
        plugin = meta["metadata"]["plugin"]["path"]
        return TrtRunner(TensorRTRuntime(folder, plugin), model, f"TensorRT {version} engines (FP16)")
    except Skip:
        raise
    except Exception as exc:  # a builder/runtime failure: report it as the reason, keep the other rows
        raise Skip(f"TensorRT engines could not be built or loaded: {type(exc).__name__}: {exc}") from exc


def make_runner(backend: str, model: MaskFace, args: argparse.Namespace, key: str,
                onnx_paths: Callable[[], dict[str, Path]], log: Callable[[str], None], checkpoint: str | None = None):
    """(runner, precision label) or raises Skip."""
    cuda = args.device == "cuda"
    if backend in CUDA_ONLY and not cuda:
        raise Skip("needs --device cuda (a CUDA GPU)")
    if backend == "torch-fp32":
        runner = TorchRunner(copy.deepcopy(model).to(args.device) if cuda else model, args.device)
        runner.engine = f"PyTorch {torch.__version__} eager"
        tf32 = cuda and torch.backends.cudnn.allow_tf32
        return runner, "FP32 (cuDNN may use TF32 for convs)" if tf32 else "FP32"
    if backend == "torch-fp32-cl":
        runner = TorchRunner(copy.deepcopy(model).to(args.device).to(memory_format=torch.channels_last),
                             args.device, channels_last=True)
        runner.engine = f"PyTorch {torch.__version__} eager, channels-last"
        tf32 = cuda and torch.backends.cudnn.allow_tf32
        return runner, "FP32 (cuDNN may use TF32 for convs)" if tf32 else "FP32"
    if backend in ("torch-fp16", "torch-fp16-cudagraph"):
        half = copy.deepcopy(model).to(args.device).half().to(memory_format=torch.channels_last)
        graph = backend.endswith("cudagraph")
        runner = TorchRunner(half, args.device, half=True, channels_last=True, cuda_graph=graph)
        runner.engine = (f"PyTorch {torch.__version__}, channels-last"
                         + (", CUDA graph of the detector trunk" if graph else " eager"))
        return runner, "FP16"
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Skip("onnxruntime is not installed") from exc
        from maskface.runtimes.ort_runtime import OrtRuntime

        providers = ["CPUExecutionProvider"]
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise Skip("onnxruntime has no CUDAExecutionProvider here; run --device cpu for the CPU rows")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        paths = onnx_paths()
        graphs = OrtRuntime(paths["detector"], paths["keypoint_head_portable"], threads=args.threads,
                            providers=providers)
        return OrtRunner(graphs, f"ONNX Runtime {ort.__version__} ({providers[0]})", model.cfg.inference,
                         model.cfg.input), "FP32"
    if backend in CPU_ONLY and cuda:
        raise Skip("a CPU deployment path: run --device cpu")
    if backend == "onnxruntime-int8":
        return int8_runner(model, args, checkpoint), "INT8 (static QDQ; sensitive layers FP32)"
    if backend == "openvino-int8":
        from maskface.runtimes.openvino_runtime import inference_hint

        rest = {"f32": "FP32", "bf16": "BF16"}[inference_hint("int8")]
        return int8_runner(model, args, checkpoint, openvino=True), f"INT8 (static QDQ; other layers {rest})"
    if backend == "openvino-bf16":
        return openvino_bf16_runner(model, onnx_paths, args.threads), "BF16 (OpenVINO hint; keypoint head FP32)"
    if backend == "torch-bf16":
        return bf16_runner(model), "BF16 (autocast; decoding FP32)"
    if backend == "triton-cpu":
        return triton_runner(model, onnx_paths, Path(args.cache_dir), args.threads, log), "FP32"
    if backend == "tensorrt-fp16":
        max_side = max(max(input_hw(s, model.cfg)) for s in args.sizes)
        max_faces = max(max(args.faces), args.e2e_faces, 1)
        return tensorrt_runner(model, key, Path(args.cache_dir), onnx_paths, max_side, max_faces, log), "FP16"
    raise Skip(f"unknown backend {backend}")  # pragma: no cover - parse_args refuses it


def int8_runner(model: MaskFace, args: argparse.Namespace, checkpoint: str | None,
                openvino: bool = False) -> OrtRunner:
    """The INT8 graphs that export/quantize_int8.py wrote, in OpenVINO (--int8-dir) or ONNX Runtime
    (--onnxruntime-int8-dir, else --int8-dir: the graph is quantised for one runtime, its --runtime).
    Graphs of a seeded model (no checkpoint) are timed too: their calibration is meaningless, their
    speed is not; the engine label says so."""
    from maskface.runtimes.ort_runtime import OrtRuntime, graph_paths

    ort_folder = getattr(args, "onnxruntime_int8_dir", None)
    folder = Path(args.int8_dir if openvino or not ort_folder else ort_folder)
    try:
        detector, keypoints = graph_paths(folder, "int8")
    except FileNotFoundError as exc:
        raise Skip(f"{exc} (it calibrates on the demo data), or pass --int8-dir") from exc
    seeded = "" if checkpoint else "; seeded weights: timing only"
    if openvino:
        graphs = openvino_runtime(folder, "int8", args.threads)
        import openvino as ov

        engine = f"OpenVINO {ov.__version__} CPU, {folder}{seeded}"
    else:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Skip("onnxruntime is not installed") from exc
        graphs = OrtRuntime(detector, keypoints, threads=args.threads)
        engine = f"ONNX Runtime {ort.__version__} (CPUExecutionProvider), {folder}{seeded}"
    return OrtRunner(graphs, engine, model.cfg.inference, model.cfg.input)


def openvino_runtime(folder: Path, precision: str, threads: int | None):
    """maskface.runtimes.openvino_runtime.OpenVinoRuntime, or Skip with the reason it cannot run here."""
    try:
        from maskface.runtimes.openvino_runtime import OpenVinoRuntime, OpenVinoUnavailableError
    except ImportError as exc:
        raise Skip(f"maskface.runtimes.openvino_runtime is not importable ({exc})") from exc
    try:
        return OpenVinoRuntime(folder, precision, threads)
    except OpenVinoUnavailableError as exc:
        raise Skip(str(exc)) from exc


def openvino_bf16_runner(model: MaskFace, onnx_paths: Callable[[], dict[str, Path]], threads: int | None) -> OrtRunner:
    graphs = openvino_runtime(onnx_paths()["detector"].parent, "bf16", threads)
    import openvino as ov

    return OrtRunner(graphs, f"OpenVINO {ov.__version__} CPU, BF16 inference hint (keypoint head FP32)",
                     model.cfg.inference, model.cfg.input)


def bf16_runner(model: MaskFace) -> RuntimeRunner:
    try:
        from maskface.runtimes.bf16_runtime import Bf16Predictor, Bf16Runtime, cpu_bf16_support
    except ImportError as exc:
        raise Skip(f"maskface.runtimes.bf16_runtime is not importable ({exc})") from exc
    support = cpu_bf16_support()
    if not support.native:
        raise Skip(f"no native BF16 on this CPU: {support.reason}")
    runtime = Bf16Runtime(model)
    return RuntimeRunner(runtime, model, f"PyTorch {torch.__version__} BF16 autocast, channels-last",
                         Bf16Predictor(model, max_side=None))
