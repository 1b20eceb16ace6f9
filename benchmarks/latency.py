"""Latency of the MaskFace pipeline stage by stage, beside the paper's Table 7.

    python benchmarks/latency.py                       # every backend of this machine, R50, 640x480
    python benchmarks/latency.py --backbones r50,mbv2 --sizes 640x480,1024x768 --runs 20 --faces 1,4,16,64
    python benchmarks/latency.py --device cuda --backends torch-fp32,torch-fp16,torch-fp16-cudagraph

Backends (default: all but torch-fp32-cl that apply to --device):
  torch-fp32            PyTorch eager, FP32 (on CUDA cuDNN may use TF32 for convs: the row says so)
  onnxruntime           ONNX Runtime with detector.onnx + keypoint_head_portable.onnx (CPU EP; on --device cuda
                        only when onnxruntime has the CUDA EP). Exported once to --cache-dir/onnx/<backbone>,
                        reused while the hash of (config, seed, checkpoint, opset, versions) matches.
  torch-fp16            CUDA only: PyTorch eager, FP16 weights and activations, channels-last
  torch-fp16-cudagraph  CUDA only: as torch-fp16, the detector trunk (backbone + FPN + context + head convs)
                        replayed as a CUDA graph captured at the fixed input shape; top-k/decoding, NMS and the
                        keypoint head (data-dependent shapes) stay eager
  torch-fp32-cl         (only when asked for) PyTorch eager FP32 with channels-last weights and input: on a CPU
                        oneDNN runs depthwise/grouped convs much faster in NHWC (MobileNetV2, ResNeXt)
  tensorrt-fp16         CUDA only: FP16 engines from export/tensorrt_build.py + export/engine_runner.py, when
                        TensorRT with a builder is importable; skipped with the reason otherwise

Per row, after --warmup untimed iterations, --runs timed iterations of:
  detector   the detector graph/stage on one image (batch 1): scores + boxes of the top-k candidates and M2..M6
  nms        score threshold + NMS + max detections on those candidates, with the model's inference config
  nms_full   the same NMS with score threshold 0: every real candidate (the worst case; an untrained model
             keeps nothing at threshold 0.5, so `nms` alone would hide the NMS cost)
  keypoints  the keypoint head (multi-level RoIAlign + 8 convs + deconv + heatmap decoding) for F faces, for each
             F in --faces; the ROIs are the image's best F real candidate boxes, so levels and sizes are real
  e2e        detector -> NMS -> keypoint head, chained on one image, with E = --e2e-faces faces: the NMS survivors,
             completed with the next-best candidates when fewer than E survive. detector/nms are stamps inside
             this chain. Preprocessing (JPEG decode, resize, normalise, pad) is EXCLUDED from e2e and reported
             separately as `preprocess` (OpenCV on the CPU).
Reported: median and p90 (ms) over the timed runs; GFLOP/s = FLOPs counted from the model
(torch.utils.flop_counter on the meta device: detector at the padded input size, keypoint head per face;
RoIAlign, top-k and NMS are not counted) / median time; fraction of peak = GFLOP/s / MEASURED peak (a 3x3
conv and an sgemm timed at the same thread count on the same device, benchmarks/hardware.py; --peak-gflops
overrides it). The clock-based CPU estimate is printed beside it, labelled as an estimate.

Writes OUT/latency.json, OUT/latency.md and OUT/latency.png (default OUT: artifacts/bench).
Weights are a seeded initialisation unless --checkpoint is given; the rows say which.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import platform
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


import numpy as np
import torch

import maskface
from benchmarks.hardware import (  # noqa: F401  (re-exported for callers of latency)
    available_cpus, cpu_info, cpu_label, cpu_peak_gflops, measure_peak_gflops,
)
from maskface.config import InferenceConfig, MaskFaceConfig
from maskface.io_utils import atomic_write_bytes, atomic_write_json, sha256_file
from maskface.modeling.maskface import MaskFace, build_model
from maskface.postprocess import PAD_SCORE, select_detections, top_candidates

SCHEMA_VERSION = 1
BACKENDS = ("torch-fp32", "onnxruntime", "torch-fp16", "torch-fp16-cudagraph", "tensorrt-fp16", "torch-fp32-cl")
DEFAULT_BACKENDS = BACKENDS[:5]  # torch-fp32-cl only when asked for
CUDA_ONLY = ("torch-fp16", "torch-fp16-cudagraph", "tensorrt-fp16")
DEFAULT_RUNS = {"cpu": 10, "cuda": 50}
DEFAULT_WARMUP = {"cpu": 2, "cuda": 10}
ONNX_EXPORT_VERSION = 1  # bump when the way the benchmark exports changes

# The paper's Table 7 (inference time per image; MaskFace rows at 640x480).
PAPER_TABLE7 = (
    dict(method="MaskFace", backbone="ResNet-50", ms=20.0, unit="ms / image", hardware="NVIDIA GeForce RTX 2080 Ti",
         input="640x480"),
    dict(method="MaskFace", backbone="ResNeXt-152", ms=55.0, unit="ms / image", hardware="NVIDIA GeForce RTX 2080 Ti",
         input="640x480"),
    dict(method="MaskFace keypoint head", backbone="-", ms=0.11, unit="ms / face", hardware="NVIDIA GeForce RTX 2080 Ti",
         input="-"),
    dict(method="RetinaFace", backbone="ResNet-152", ms=75.0, unit="ms / image", hardware="NVIDIA Tesla P40",
         input="as in the paper"),
    dict(method="RefineFace", backbone="ResNet-50", ms=35.0, unit="ms / image", hardware="NVIDIA GeForce GTX 1080 Ti",
         input="as in the paper"),
    dict(method="RefineFace", backbone="ResNet-152", ms=57.0, unit="ms / image", hardware="NVIDIA GeForce GTX 1080 Ti",
         input="as in the paper"),
    dict(method="DFS", backbone="ResNet-50", ms=35.0, unit="ms / image", hardware="NVIDIA Tesla P40",
         input="as in the paper"),
)
BACKBONE_NAMES = {"r50": "ResNet-50", "mbv2": "MobileNetV2", "rx101": "ResNeXt-101 32x8d",
                  "rx152": "ResNeXt-152 32x8d"}


# ------------------------------------------------------------------------------------------------ arguments


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Stage definitions: see the module docstring and benchmarks/README.md.")
    p.add_argument("--backbones", default="r50", help="comma list of presets: r50, mbv2, rx101, rx152 (default r50)")
    p.add_argument("--sizes", default="640x480", help="comma list of WIDTHxHEIGHT image sizes (default 640x480); "
                   "the network input is padded to multiples of 64 as the preprocess step does")
    p.add_argument("--backends", default=None, help=f"comma list out of {', '.join(BACKENDS)} (default: all that "
                   "apply to --device)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--runs", type=int, default=None, help="timed iterations (default 10 on cpu, 50 on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 2 on cpu, 10 on cuda)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of PyTorch and ONNX Runtime "
                   "(default: the CPUs this process may use)")
    p.add_argument("--faces", default="1,4,16,64", help="keypoint-head face counts (default 1,4,16,64)")
    p.add_argument("--e2e-faces", type=int, default=4, help="faces through the keypoint head in the e2e chain (default 4)")
    p.add_argument("--checkpoint", help="trained checkpoint (its config decides the backbone); default: seeded init")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --checkpoint")
    p.add_argument("--out", default="artifacts/bench", help="folder of latency.json/.md/.png (default artifacts/bench)")
    p.add_argument("--cache-dir", default="artifacts/bench", help="ONNX/engine cache root (default artifacts/bench)")
    p.add_argument("--peak-gflops", type=float, default=None, help="peak FP32 GFLOP/s of the device, instead of "
                   "measuring it (a 3x3 conv and an sgemm at --threads)")
    p.add_argument("--peak-runs", type=int, default=10, help="timed runs of each peak kernel (median taken)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    args.backbones = _csv(args.backbones)
    for b in args.backbones:
        if b not in BACKBONE_NAMES:
            p.error(f"unknown backbone {b!r}; choose from {', '.join(BACKBONE_NAMES)}")
    try:
        args.sizes = [parse_size(s) for s in _csv(args.sizes)]
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    try:
        args.faces = sorted({int(f) for f in _csv(args.faces)})
    except ValueError:
        p.error(f"--faces must be a comma list of integers, got {args.faces!r}")
    if not args.faces or min(args.faces) < 1 or max(args.faces) > 1024:
        p.error("--faces values must be in 1..1024")
    if args.e2e_faces < 0:
        p.error("--e2e-faces must be >= 0")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    if args.backends is None:
        args.backends = [b for b in DEFAULT_BACKENDS if args.device == "cuda" or b not in CUDA_ONLY]
    else:
        args.backends = _csv(args.backends)
        for b in args.backends:
            if b not in BACKENDS:
                p.error(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    args.runs = DEFAULT_RUNS[args.device] if args.runs is None else args.runs
    args.warmup = DEFAULT_WARMUP[args.device] if args.warmup is None else args.warmup
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if args.threads is None:
        args.threads = available_cpus()
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------ hardware


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpu = cpu_info()
    env: dict[str, Any] = {
        "hostname": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "maskface": maskface.__version__, "cpu": cpu_label(cpu), "cpu_flags_used": sorted(
            set(cpu["flags"]) & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
        "cpu_logical": cpu["logical_cpus"], "cpu_available": cpu["available_cpus"],
        "cpu_physical_cores": cpu["physical_cores"], "threads": args.threads, "device": args.device,
    }
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        env["device_name"] = env["gpu"]
    else:
        env["device_name"] = env["cpu"]
    # What the achieved rates are divided by: the peak MEASURED here at the benchmark's thread count
    # (or --peak-gflops); the clock-based CPU estimate is reported beside it, labelled as one.
    if args.peak_gflops:
        env["peak"] = {"gflops": args.peak_gflops, "estimate": False, "source": "given",
                       "formula": "given with --peak-gflops"}
    else:
        env["peak"] = measure_peak_gflops(args.device, args.threads, runs=args.peak_runs)
    env["peak_estimate"] = cpu_peak_gflops(cpu, args.threads) if args.device == "cpu" else None
    return env


# ------------------------------------------------------------------------------------------------ model + work


def load_model(name: str, checkpoint: str | None, seed: int) -> tuple[MaskFace, bool]:
    """(CPU FP32 model in eval mode, trained?). The same seeding as export.export_onnx.load_or_init_model."""
    if checkpoint:
        from maskface.checkpoint import load_model as load_checkpoint

        return load_checkpoint(checkpoint).eval(), True
    torch.manual_seed(seed)
    return build_model(name).eval(), False


def input_hw(size: tuple[int, int], cfg: MaskFaceConfig) -> tuple[int, int]:
    """Network input (H, W) of a WIDTHxHEIGHT image: padded up to multiples of size_divisibility."""
    div = cfg.input.size_divisibility
    w, h = size
    return -(-h // div) * div, -(-w // div) * div


def count_gflop(cfg: MaskFaceConfig, hw: tuple[int, int]) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of the detector at input hw and of the keypoint head for one face."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = copy.deepcopy(cfg)
    cfg.backbone.weights = None  # nothing to load on the meta device
    k = cfg.keypoints

    def count(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    with torch.device("meta"):
        model = build_model(config=cfg).eval()
        images = torch.empty(1, 3, *hw)
        pooled = torch.empty(1, cfg.fpn.channels, k.roi_size, k.roi_size)
        detector = count(lambda: model.detect_candidates(images))
        keypoint = count(lambda: model.keypoint_head(pooled))
    return {"detector": detector, "keypoint_per_face": keypoint}


def sample_image(size: tuple[int, int]) -> np.ndarray:
    """A real photo (scikit-image's astronaut) resized to WIDTHxHEIGHT, BGR uint8; noise without skimage.
    Without OpenCV (a GPU machine's own Python: torch + numpy only) torch resizes it."""
    try:
        from skimage import data

        rgb = data.astronaut()
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    except Exception:  # pragma: no cover - skimage missing
        bgr = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    try:
        import cv2
    except ImportError:
        t = torch.from_numpy(bgr).permute(2, 0, 1)[None].float()
        mode = "area" if size[0] < bgr.shape[1] else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        out = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode=mode, **kwargs)
        return np.ascontiguousarray(out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if size[0] < bgr.shape[1] else cv2.INTER_LINEAR)


def prepare(image_bgr: np.ndarray, cfg: MaskFaceConfig) -> np.ndarray:
    from maskface.preprocess import prepare_image

    return prepare_image(image_bgr, cfg.input, max_side=None).image


def time_preprocess(image_bgr: np.ndarray, cfg: MaskFaceConfig, runs: int) -> dict[str, float] | None:
    """JPEG decode + maskface.preprocess.prepare_image (no resize: the image already has the size);
    None without OpenCV (it decodes the JPEG)."""
    try:
        import cv2
    except ImportError:
        return None

    from maskface.preprocess import decode_image, prepare_image

    ok, jpeg = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    data = jpeg.tobytes()
    times = []
    for _ in range(max(runs, 3) + 1):
        t0 = time.perf_counter()
        prepare_image(decode_image(data), cfg.input, max_side=None)
        times.append(time.perf_counter() - t0)
    return summarize(times[1:])


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "min": float(ms.min()),
            "mean": float(ms.mean()), "n": int(ms.size)}


# ------------------------------------------------------------------------------------------------ runners


class Skip(Exception):
    """A backend that cannot run here; the message is the reason."""


class TorchRunner:
    """The model's own stages (detect_candidates / select_detections / landmarks) on torch tensors."""

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

    def nms(self, scores, boxes, inference: InferenceConfig):
        return select_detections(scores, boxes, inference.score_threshold, inference.nms_threshold,
                                 inference.max_detections)

    def keypoints(self, features, rois):
        points, scores, _ = self.model.landmarks(features, rois)
        return points, scores

    def rois(self, boxes, index):
        b = boxes[index]
        return torch.cat([b.new_zeros((b.shape[0], 1)), b], dim=1)

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
    """TensorRT engines through export/engine_runner.TrtGraphs (torch CUDA tensors in and out)."""

    def __init__(self, graphs, model: MaskFace, engine: str):
        super().__init__(model, "cuda")
        self.graphs = graphs
        self.engine = engine

    def detect(self, x):
        return self.graphs.detect(x)

    def keypoints(self, features, rois):
        return self.graphs.keypoints(features, rois)


class OrtRunner:
    """ONNX Runtime sessions (maskface.serving.onnx_graphs.OnnxGraphs) on numpy arrays."""

    def __init__(self, graphs, engine: str):
        self.graphs = graphs
        self.engine = engine
        self.checks: dict[str, float] = {}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[None], np.float32)

    def detect(self, x):
        return self.graphs.detect(x)

    def nms(self, scores, boxes, inference: InferenceConfig):
        from maskface.serving.onnx_graphs import nms_step

        return nms_step(scores, boxes, inference)

    def keypoints(self, features, rois):
        return self.graphs.keypoints(features, rois)

    def rois(self, boxes, index):
        b = np.asarray(boxes)[index]
        return np.concatenate([np.zeros((len(b), 1), np.float32), b.astype(np.float32)], axis=1)

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


def onnx_graphs(model: MaskFace, key: str, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Path]:
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
        from export.engine_runner import TrtGraphs

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
        return TrtRunner(TrtGraphs(folder, plugin), model, f"TensorRT {version} engines (FP16)")
    except Skip:
        raise
    except Exception as exc:  # a builder/runtime failure: report it as the reason, keep the other rows
        raise Skip(f"TensorRT engines could not be built or loaded: {type(exc).__name__}: {exc}") from exc


def make_runner(backend: str, model: MaskFace, args: argparse.Namespace, key: str,
                onnx_paths: Callable[[], dict[str, Path]], log: Callable[[str], None]):
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
        from maskface.serving.onnx_graphs import OnnxGraphs

        providers = ["CPUExecutionProvider"]
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise Skip("onnxruntime has no CUDAExecutionProvider here; run --device cpu for the CPU rows")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        paths = onnx_paths()
        graphs = OnnxGraphs(paths["detector"], paths["keypoint_head_portable"], threads=args.threads,
                            providers=providers)
        return OrtRunner(graphs, f"ONNX Runtime {ort.__version__} ({providers[0]})"), "FP32"
    if backend == "tensorrt-fp16":
        max_side = max(max(input_hw(s, model.cfg)) for s in args.sizes)
        max_faces = max(max(args.faces), args.e2e_faces, 1)
        return tensorrt_runner(model, key, Path(args.cache_dir), onnx_paths, max_side, max_faces, log), "FP16"
    raise Skip(f"unknown backend {backend}")  # pragma: no cover - parse_args refuses it


# ------------------------------------------------------------------------------------------------ measuring


def measure(runner, image: np.ndarray, inference: InferenceConfig, faces: list[int], e2e_faces: int,
            runs: int, warmup: int, tick: Callable[[], None]) -> dict[str, Any]:
    """Time the stages (see the module docstring); returns the row's timing part."""
    x = runner.prepare(image)
    full = dataclasses.replace(inference, score_threshold=0.0)
    with torch.no_grad():
        scores, boxes, _ = runner.detect(x)
        runner.sync()
        num_candidates = int(scores.shape[1])
        real = runner.num_real(scores[0])
        if max(faces) > real:
            raise ValueError(f"--faces {max(faces)} > the {real} real candidates of this input: use a larger size")
        top_rois = runner.rois(boxes[0], runner.first(max(faces)))
        t: dict[str, list[float]] = {k: [] for k in ("detector", "nms", "nms_full", "e2e", "e2e_keypoints")}
        kp: dict[int, list[float]] = {f: [] for f in faces}
        kept_counts, full_counts = [], []
        for i in range(warmup + runs):
            runner.sync()
            t0 = time.perf_counter()
            scores, boxes, features = runner.detect(x)
            runner.sync()
            t1 = time.perf_counter()
            kept = runner.nms(scores[0], boxes[0], inference)
            runner.sync()
            t2 = time.perf_counter()
            if e2e_faces:
                runner.keypoints(features, runner.rois(boxes[0], runner.fill(kept, num_candidates, e2e_faces)))
            runner.sync()
            t3 = time.perf_counter()
            kept_all = runner.nms(scores[0], boxes[0], full)
            runner.sync()
            t4 = time.perf_counter()
            sweep = {}
            for f in faces:
                s0 = time.perf_counter()
                runner.keypoints(features, top_rois[:f])
                runner.sync()
                sweep[f] = time.perf_counter() - s0
            if i >= warmup:
                t["detector"].append(t1 - t0)
                t["nms"].append(t2 - t1)
                t["e2e_keypoints"].append(t3 - t2)
                t["e2e"].append(t3 - t0)
                t["nms_full"].append(t4 - t3)
                for f in faces:
                    kp[f].append(sweep[f])
                kept_counts.append(len(kept))
                full_counts.append(len(kept_all))
            tick()
    out: dict[str, Any] = {k: summarize(v) for k, v in t.items()}
    out["keypoints"] = {str(f): {"total_ms": summarize(kp[f]),
                                 "per_face_ms": summarize([s / f for s in kp[f]])} for f in faces}
    out["nms_kept"] = int(np.median(kept_counts))
    out["nms_full_kept"] = int(np.median(full_counts))
    out["nms_full_candidates"] = real
    out["num_candidates"] = num_candidates
    return out


def add_rates(row: dict[str, Any], gflop: dict[str, float], peak: float | None) -> None:
    det, per_face = gflop["detector"], gflop["keypoint_per_face"]
    e2e_work = det + row["e2e_faces"] * per_face
    row["gflop"] = {"detector": det, "keypoint_per_face": per_face, "e2e": e2e_work}
    rates = {"detector": det / (row["detector_ms"]["median"] / 1e3),
             "e2e": e2e_work / (row["e2e_ms"]["median"] / 1e3)}
    for f, v in row["keypoints"].items():
        rates[f"keypoints_{f}"] = per_face * int(f) / (v["total_ms"]["median"] / 1e3)
    row["gflops_achieved"] = rates
    row["peak_fraction"] = {k: (v / peak if peak else None) for k, v in rates.items()}


# ------------------------------------------------------------------------------------------------ reports


def _fmt(v: float | None, digits: int | None = None) -> str:
    if v is None:
        return "n/a"
    if digits is None:
        digits = 2 if abs(v) < 10 else 1 if abs(v) < 1000 else 0
    return f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ONNX Runtime / PyTorch FP32 time ratios for the same backbone, size and device (> 1: ORT slower)."""
    out = []
    for ort_row in (r for r in rows if r["backend"] == "onnxruntime"):
        for ref in rows:
            if ref["backend"] == "torch-fp32" and (ref["backbone"], ref["size"]) == (ort_row["backbone"], ort_row["size"]):
                item = {"backbone": ort_row["backbone"], "size": ort_row["size"], "numerator": "onnxruntime",
                        "denominator": "torch-fp32"}
                for stage in ("detector_ms", "nms_ms", "e2e_ms"):
                    item[stage.replace("_ms", "")] = ort_row[stage]["median"] / ref[stage]["median"]
                f = max(ort_row["keypoints"], key=int)
                item[f"keypoints_{f}"] = (ort_row["keypoints"][f]["total_ms"]["median"]
                                          / ref["keypoints"][f]["total_ms"]["median"])
                out.append(item)
    return out


def to_markdown(report: dict[str, Any]) -> str:
    env, rows = report["environment"], report["rows"]
    faces = report["settings"]["faces"]
    trained = {r["trained"] for r in rows}
    lines = [
        "# MaskFace latency (benchmarks/latency.py)",
        "",
        f"- Device: **{env['device_name']}** (`--device {env['device']}`)"
        + (f"; host CPU: {env['cpu']}" if env.get("gpu") else "")
        + f"; threads: {env['threads']} of {env['cpu_available']} available CPUs",
        f"- Software: torch {env['torch']}, onnxruntime {env.get('onnxruntime') or 'not installed'}, "
        f"Python {env['python']}" + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else ""),
        f"- Weights: {'trained (--checkpoint)' if trained == {True} else 'seeded initialisation, untrained' if trained == {False} else 'mixed'}"
        " (timings do not depend on the weight values, except the number of faces NMS keeps)",
        f"- {report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up runs; batch 1; "
        "times in ms, median / p90",
        "- e2e = detector + NMS + keypoint head for E faces, chained; preprocessing EXCLUDED "
        "(reported separately below)",
        f"- Peak (the % peak columns divide by it): {env['peak']['formula']}",
        *([f"- For comparison only, an ESTIMATE from the clock: {env['peak_estimate']['formula']}"]
          if env.get("peak_estimate") else []),
        f"- Created {report['created']} by `{report['command']}`",
        "",
        "## Our rows",
        "",
    ]
    if not report.get("complete", True):
        lines[-2:-2] = ["**PARTIAL: the run has not finished (or was cut short); rows so far only.**", ""]
    head = (["backbone", "image (input)", "backend", "precision", "device", "threads", "detector", "NMS [kept]",
             "NMS all candidates [kept/of]"] + [f"kp ms/face @{f}" for f in faces]
            + ["e2e [E faces]", "detector GFLOP/s", "detector % of measured peak", "e2e GFLOP/s"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["backbone_name"], f"{r['size']} ({r['input_hw'][1]}x{r['input_hw'][0]})", r["backend"], r["precision"],
            r["device_kind"], str(r["threads"]),
            f"{_fmt(r['detector_ms']['median'])} / {_fmt(r['detector_ms']['p90'])}",
            f"{_fmt(r['nms_ms']['median'], 3)} / {_fmt(r['nms_ms']['p90'], 3)} [{r['nms_kept']}]",
            f"{_fmt(r['nms_full_ms']['median'], 3)} / {_fmt(r['nms_full_ms']['p90'], 3)} "
            f"[{r['nms_full_kept']}/{r['nms_full_candidates']}]",
        ]
        for f in faces:
            v = r["keypoints"][str(f)]["per_face_ms"]
            cells.append(f"{_fmt(v['median'], 3)} / {_fmt(v['p90'], 3)}")
        cells += [f"{_fmt(r['e2e_ms']['median'])} / {_fmt(r['e2e_ms']['p90'])} [{r['e2e_faces']}]",
                  _fmt(r["gflops_achieved"]["detector"], 1), _pct(r["peak_fraction"]["detector"]),
                  _fmt(r["gflops_achieved"]["e2e"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| (no backend ran) |" + " |" * (len(head) - 1))

    lines += ["", "## Side by side with the paper's Table 7", "",
              "| source | method | backbone | precision | hardware | image | ms / image | keypoint head ms / face |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f1 = r["keypoints"][str(max(faces, key=int))]["per_face_ms"]["median"]
        lines.append(f"| ours ({r['backend']}) | MaskFace | {r['backbone_name']} | {r['precision']} | {r['device_name']} "
                     f"| {r['size']} | {_fmt(r['e2e_ms']['median'])} (e2e, {r['e2e_faces']} faces) "
                     f"| {_fmt(f1, 3)} (@{max(faces)}) |")
    for p in report["paper_table7"]:
        per_image = _fmt(p["ms"]) if p["unit"] == "ms / image" else "-"
        per_face = _fmt(p["ms"], 2) if p["unit"] == "ms / face" else "-"
        lines.append(f"| paper Table 7 | {p['method']} | {p['backbone']} | (not stated) | {p['hardware']} | "
                     f"{p['input']} | {per_image} | {per_face} |")

    lines += ["", "## Work and rates", "", "| backbone | image | detector GFLOP | keypoint GFLOP / face | preprocess ms (median) |",
              "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if (r["backbone"], r["size"]) in seen:
            continue
        seen.add((r["backbone"], r["size"]))
        pre = report["preprocess_ms"].get(r["size"]) or {}  # None: no OpenCV to decode the JPEG
        lines.append(f"| {r['backbone_name']} | {r['size']} | {_fmt(r['gflop']['detector'], 1)} | "
                     f"{_fmt(r['gflop']['keypoint_per_face'], 3)} | {_fmt(pre.get('median'))} |")
    if report["ratios"]:
        lines += ["", "## ONNX Runtime / PyTorch FP32 (time ratio, > 1 means ONNX Runtime is slower)", "",
                  "| backbone | image | detector | NMS | keypoints (largest F) | e2e |", "|---|---|---|---|---|---|"]
        for q in report["ratios"]:
            kpk = next(k for k in q if k.startswith("keypoints_"))
            lines.append(f"| {BACKBONE_NAMES.get(q['backbone'], q['backbone'])} | {q['size']} | {q['detector']:.2f} | "
                         f"{q['nms']:.2f} | {q[kpk]:.2f} ({kpk.split('_')[1]} faces) | {q['e2e']:.2f} |")
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['backbone']} / {s['backend']}: {s['reason']}" for s in report["skipped"]]
    notes = [n for r in rows for n in r.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    # Grouped bars, one per stage and the end-to-end total, on a log axis: stacking segments on a
    # log scale would hide the small ones (NMS) and misstate each segment's share.
    stages = (("detector", "detector_ms", "#3b75af"), ("NMS", "nms_ms", "#ef8636"),
              ("keypoint head (E faces)", "e2e_keypoints_ms", "#519e3e"), ("end to end", "e2e_ms", "#7f3fbf"))
    labels = [f"ours {r['backbone']} {r['size']}\n{r['backend']}\n{r['device_kind']}" for r in rows]
    paper = [p for p in report["paper_table7"] if p["unit"] == "ms / image"]
    labels += [f"paper {p['method']}\n{p['backbone']}\n{p['hardware'].replace('NVIDIA ', '')}" for p in paper]
    width = 0.8 / len(stages)
    heights = []
    for k, (name, key, colour) in enumerate(stages):
        values = [r[key]["median"] for r in rows]
        xs = np.arange(len(rows)) + (k - (len(stages) - 1) / 2) * width
        ax1.bar(xs, values, width, color=colour, label=name)
        for x, v in zip(xs, values):
            ax1.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=6, rotation=90)
        heights += values
    px = np.arange(len(rows), len(rows) + len(paper))
    ax1.bar(px, [p["ms"] for p in paper], width, color="#aaaaaa", hatch="//", label="paper Table 7 (per image)")
    heights += [p["ms"] for p in paper]
    ax1.set_xticks(np.arange(len(labels)))
    ax1.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax1.set_yscale("log")
    positive = [v for v in heights if v > 0]
    if positive:
        ax1.set_ylim(min(positive) / 3, max(positive) * 4)
    ax1.set_ylabel("ms per image (median, log scale; bars side by side, not stacked)")
    ax1.set_title("Per-image latency by stage (preprocessing excluded)")
    ax1.legend(fontsize=8)
    faces = report["settings"]["faces"]
    for r in rows:
        ax2.plot(faces, [r["keypoints"][str(f)]["per_face_ms"]["median"] for f in faces], marker="o",
                 label=f"{r['backbone']} {r['size']} {r['backend']}")
    ax2.axhline(0.11, color="#777777", linestyle="--", label="paper: 0.11 ms/face (2080 Ti)")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("faces per call")
    ax2.set_ylabel("keypoint head ms per face (median)")
    ax2.set_title("Keypoint head")
    ax2.legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"MaskFace latency on {env['device_name']} ({env['threads']} threads; "
                 f"{'trained' if all(r['trained'] for r in rows) and rows else 'untrained'} weights)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ------------------------------------------------------------------------------------------------ main


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_report(args: argparse.Namespace, env: dict[str, Any], command: str, preprocess: dict[str, Any],
                 rows: list[dict[str, Any]], skipped: list[dict[str, str]], complete: bool) -> dict[str, Any]:
    return _jsonable({
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "environment": env,
        "settings": {"backbones": args.backbones, "sizes": [f"{w}x{h}" for w, h in args.sizes],
                     "backends": args.backends, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                     "faces": args.faces, "e2e_faces": args.e2e_faces, "device": args.device,
                     "checkpoint": args.checkpoint, "seed": args.seed},
        "definitions": {
            "detector_ms": "detector stage on one image (batch 1): candidates + M2..M6",
            "nms_ms": "score threshold + NMS + max detections with the model's inference config",
            "nms_full_ms": "the same NMS at score threshold 0 over every real candidate (worst case)",
            "keypoints": "keypoint head (RoIAlign + convs + heatmap decoding) for F faces = the best F candidates",
            "e2e_ms": "detector -> NMS -> keypoint head for e2e_faces faces, chained; preprocessing excluded",
            "preprocess_ms": "JPEG decode + maskface.preprocess.prepare_image on the CPU, not part of e2e",
            "gflops_achieved": "counted model GFLOP (torch.utils.flop_counter, 2 FLOPs per multiply-add) / median s",
            "peak_fraction": "gflops_achieved / environment.peak.gflops (measured: a 3x3 conv and an sgemm at the same threads, benchmarks/hardware.py; or --peak-gflops)",
        },
        "preprocess_ms": preprocess,
        "paper_table7": [dict(p) for p in PAPER_TABLE7],
        "rows": rows,
        "ratios": ratios(rows),
        "skipped": skipped,
    })


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir)

    per_combo = args.warmup + args.runs
    progress = _Progress(len(args.backbones) * len(args.backends) * len(args.sizes) * per_combo,
                         not args.no_progress)
    log = progress.write
    log(f"latency: {env['device_name']}, {args.threads} threads, backends {', '.join(args.backends)}, "
        f"{args.runs} runs after {args.warmup} warm-up")

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    preprocess: dict[str, dict[str, float]] = {}
    images = {size: sample_image(size) for size in args.sizes}
    command = "python benchmarks/latency.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    json_path, md_path, png_path = out / "latency.json", out / "latency.md", out / "latency.png"

    def write(final: bool) -> dict[str, Any]:
        """Rewrite JSON + markdown (after every row, so a run cut short still leaves its rows)."""
        report = build_report(args, env, command, preprocess, rows, skipped, complete=final)
        atomic_write_json(json_path, report)
        atomic_write_bytes(md_path, to_markdown(report).encode())
        return report

    names = [args.backbones[0]] if args.checkpoint else args.backbones
    if args.checkpoint and len(args.backbones) > 1:
        log("latency: --checkpoint given: its config decides the backbone, --backbones is ignored")
    for name in names:
        model, trained = load_model(name, args.checkpoint, args.seed)
        preset = model.cfg.name
        for size in args.sizes:
            if f"{size[0]}x{size[1]}" not in preprocess:
                preprocess[f"{size[0]}x{size[1]}"] = time_preprocess(images[size], model.cfg, args.runs)
        key_cache: dict[str, Any] = {}

        def key(model: MaskFace = model, key_cache: dict[str, Any] = key_cache) -> str:
            if "key" not in key_cache:
                key_cache["key"] = model_key(model.cfg, args.seed, args.checkpoint)
            return key_cache["key"]

        def onnx_paths(model: MaskFace = model, key_cache: dict[str, Any] = key_cache) -> dict[str, Path]:
            if "paths" not in key_cache:
                key_cache["paths"] = onnx_graphs(model, key(), cache_dir, log)
            return key_cache["paths"]

        work = {size: count_gflop(model.cfg, input_hw(size, model.cfg)) for size in args.sizes}
        for backend in args.backends:
            progress.describe(f"{preset} {backend} (setup)")
            try:
                k = key() if backend in ("onnxruntime", "tensorrt-fp16") else ""
                runner, precision = make_runner(backend, model, args, k, onnx_paths, log)
            except Exception as exc:  # Skip, or a setup failure (export, session, engine): a reason, not a crash
                reason = str(exc) if isinstance(exc, Skip) else f"setup failed: {type(exc).__name__}: {exc}"
                skipped.append({"backbone": preset, "backend": backend, "reason": reason})
                log(f"latency: skipping {backend} for {preset}: {reason}")
                progress.update(per_combo * len(args.sizes))
                continue
            for size in args.sizes:
                size_name = f"{size[0]}x{size[1]}"
                progress.describe(f"{preset} {backend} {size_name}")
                image = prepare(images[size], model.cfg)
                try:
                    timing = measure(runner, image, model.cfg.inference, args.faces, args.e2e_faces, args.runs,
                                     args.warmup, progress.update)
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory, faces > candidates
                    skipped.append({"backbone": preset, "backend": backend,
                                    "reason": f"{size_name}: {type(exc).__name__}: {exc}"})
                    log(f"latency: {preset} {backend} {size_name} failed: {exc}")
                    continue
                notes = []
                if not trained:
                    notes.append("untrained weights: NMS at the configured threshold keeps (almost) no face, so "
                                 "`NMS all candidates` shows the NMS cost and e2e tops its faces up with candidates")
                if backend == "onnxruntime":
                    notes.append("onnxruntime keypoint graph (portable): RoiAlign runs on every level for every ROI, "
                                 "plus one padding ROI per call; GFLOP/s counts the model's work only")
                if backend == "torch-fp16-cudagraph":
                    notes.append("CUDA graph covers backbone + FPN + context + head convs at the fixed input shape; "
                                 "top-k/decoding, NMS and the keypoint head run eagerly")
                row: dict[str, Any] = {
                    "backbone": preset, "backbone_name": BACKBONE_NAMES.get(preset, preset),
                    "size": size_name, "input_hw": list(input_hw(size, model.cfg)), "backend": backend,
                    "engine": runner.engine, "precision": precision, "device_kind": args.device,
                    "device_name": env["device_name"], "threads": args.threads, "batch": 1,
                    "trained": trained, "checkpoint": args.checkpoint, "seed": None if trained else args.seed,
                    "runs": args.runs, "warmup": args.warmup, "preprocess_included": False,
                    "e2e_faces": args.e2e_faces,
                    "detector_ms": timing["detector"], "nms_ms": timing["nms"], "nms_full_ms": timing["nms_full"],
                    "nms_kept": timing["nms_kept"], "nms_full_kept": timing["nms_full_kept"],
                    "nms_full_candidates": timing["nms_full_candidates"],
                    "num_candidates": timing["num_candidates"], "keypoints": timing["keypoints"],
                    "e2e_keypoints_ms": timing["e2e_keypoints"], "e2e_ms": timing["e2e"],
                    "checks": dict(runner.checks), "notes": notes,
                }
                add_rates(row, work[size], env["peak"]["gflops"])
                rows.append(row)
                write(final=False)
                log(f"latency: {preset} {size_name} {backend}: detector {row['detector_ms']['median']:.2f} ms, "
                    f"e2e {row['e2e_ms']['median']:.2f} ms (median)")
            del runner
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    report = write(final=True)
    plotted = plot(report, png_path)
    print(to_markdown(report))
    print(f"latency: wrote {json_path}, {md_path}" + (f", {png_path}" if plotted else " (matplotlib missing: no PNG)"))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
