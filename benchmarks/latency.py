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
  onnxruntime-int8      CPU only: the calibrated INT8 graphs of export/quantize_int8.py in ONNX Runtime: those of
                        --onnxruntime-int8-dir (quantize_int8 --runtime onnxruntime), else --int8-dir; skipped
                        with the reason when absent (seeded weights: timed, labelled timing only)
  openvino-int8         CPU only: the INT8 graphs of --int8-dir (quantize_int8's default --runtime openvino) in
                        OpenVINO (the cpu target's int8)
  openvino-bf16         CPU only, where the CPU has native BF16 (detected): the FP32 graphs in OpenVINO with its
                        BF16 hint, keypoint head FP32 (the cpu target's bf16; maskface.runtimes.openvino_runtime)
  torch-bf16            CPU only, where the CPU has native BF16 (detected): maskface.runtimes.bf16_runtime
  triton-cpu            CPU only: the Triton cpu target (FP32 graphs) served for real by tritonserver on loopback

Per row, after --warmup untimed iterations, --runs timed iterations of:
  detector   the detector graph/stage on one image (batch 1): scores + boxes of the top-k candidates and M2..M6
  nms        score threshold + NMS + max detections on those candidates, with the model's inference config
  nms_full   the same NMS with score threshold 0: every real candidate (the worst case; an untrained model
             keeps nothing at threshold 0.5, so `nms` alone would hide the NMS cost)
  keypoints  the keypoint head (multi-level RoIAlign + 8 convs + deconv + heatmap decoding) for F faces, for each
             F in --faces; the ROIs are the image's best F real candidate boxes, so levels and sizes are real
  pipeline   the whole pipeline on the JPEG of the image, as a user calls it: decode, preprocess, detector, NMS,
             keypoint head for the faces found, original pixels (Predictor / OnnxPredictor in process; one
             request to the `maskface` ensemble for triton-cpu), timed after one untimed request and 50 ms
             idle, in a pass of its own after the other stages' (StageTimer.iteration says why). Not for
             the FP16/TensorRT rows.
  e2e        detector -> NMS -> keypoint head, chained on one image, with E = --e2e-faces faces: the NMS survivors,
             completed with the next-best candidates when fewer than E survive. detector/nms are stamps inside
             this chain. Preprocessing (JPEG decode, resize, normalise, pad) is EXCLUDED from e2e and reported
             separately as `preprocess` (OpenCV on the CPU).
Reported: median and p90 (ms) over the timed runs; GFLOP/s = FLOPs counted from the model
(torch.utils.flop_counter on the meta device: detector at the padded input size, keypoint head per face;
RoIAlign, top-k and NMS are not counted) / median time; fraction of peak = GFLOP/s / MEASURED peak (a 3x3
conv and an sgemm timed at the same thread count on the same device, benchmarks/hardware.py; --peak-gflops
overrides it). The clock-based CPU estimate is printed beside it, labelled as an estimate.

The backends of one image size run INTERLEAVED (round r times every backend once, in a seeded random
order, each round of a backend opening with one untimed detector call to warm its caches), so that a
noisy machine's drift falls on all of them alike; --no-interleave runs them in turn.
Ratios to ONNX Runtime FP32 of the same run, and the CPU goals (INT8 detector <= 0.30x, BF16 detector
<= 0.55x, Triton pipeline <= 1.05x; issue #15), are in the report.

Writes OUT/latency.json, OUT/latency.md and OUT/latency.png (default OUT: artifacts/bench).
Weights are a seeded initialisation unless --checkpoint is given; the rows say which.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
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
from maskface.io_utils import atomic_write_bytes, atomic_write_json
from maskface.modeling.maskface import MaskFace, build_model
from benchmarks.latency_report import (  # noqa: F401
    BACKBONE_NAMES, PAIRED_STAGES, _jsonable, plot, ratios, to_markdown, vs_onnxruntime_fp32,
)
from benchmarks.latency_runners import (  # noqa: F401  (re-exported: tests and callers use latency.X)
    CPU_ONLY, CUDA_ONLY, ONNX_EXPORT_VERSION, OrtRunner, Skip, TorchRunner, TrtRunner, input_hw, make_runner, model_key,
    cached_onnx_export, tensorrt_runner,
)

SCHEMA_VERSION = 1
BACKENDS = ("torch-fp32", "onnxruntime", "torch-fp16", "torch-fp16-cudagraph", "tensorrt-fp16", "onnxruntime-int8",
            "openvino-int8", "openvino-bf16", "torch-bf16", "triton-cpu", "torch-fp32-cl")
DEFAULT_BACKENDS = BACKENDS[:-1]  # torch-fp32-cl only when asked for
PIPELINE_SETTLE_S = 0.05  # idle time before each timed pipeline request (StageTimer.iteration)
# The CPU deployment goals of issue #15, as time ratios to ONNX Runtime FP32 of the same model, image and run.
CPU_GOALS = {"onnxruntime-int8": ("detector", 0.30), "openvino-int8": ("detector", 0.30), "openvino-bf16": ("detector", 0.55),
             "torch-bf16": ("detector", 0.55), "triton-cpu": ("pipeline", 1.05)}
DEFAULT_RUNS = {"cpu": 10, "cuda": 50}
DEFAULT_WARMUP = {"cpu": 2, "cuda": 10}

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
    p.add_argument("--backbones", default="demo,r50",
                   help="comma list: demo (the shipped demo model, trained), r50, mbv2, rx101, rx152 (seeded "
                        "initialisations: the paper's widths) (default demo,r50)")
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
    p.add_argument("--int8-dir", default="artifacts/onnx_int8",
                   help="folder of detector_int8.onnx + keypoint_head_portable_int8.onnx (export/quantize_int8.py) "
                        "for the openvino-int8 row, and the onnxruntime-int8 one without --onnxruntime-int8-dir "
                        "(default %(default)s)")
    p.add_argument("--onnxruntime-int8-dir", default=None,
                   help="folder of the INT8 graphs for the onnxruntime-int8 row: quantize_int8 --runtime onnxruntime "
                        "keeps every conv on ONNX Runtime's INT8 kernel (default: --int8-dir)")
    p.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="time the backends one after another instead of interleaved")
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
        args.backends = [b for b in DEFAULT_BACKENDS
                         if (b not in CUDA_ONLY or args.device == "cuda") and (b not in CPU_ONLY or args.device == "cpu")]
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


def model_checkpoint(name: str, checkpoint: str | None) -> str | None:
    """--checkpoint, else the shipped demo model for the `demo` backbone (every default uses it), else None."""
    if checkpoint or name != "demo":
        return checkpoint
    from maskface.demo.weights import demo_checkpoint

    return str(demo_checkpoint())


def load_model(name: str, checkpoint: str | None, seed: int) -> tuple[MaskFace, bool]:
    """(CPU FP32 model in eval mode, trained?). The same seeding as export.export_onnx.load_or_init_model."""
    if checkpoint:
        from maskface.checkpoint import load_model as load_checkpoint

        return load_checkpoint(checkpoint).eval(), True
    torch.manual_seed(seed)
    return build_model(name).eval(), False


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


def encode_jpeg(image_bgr: np.ndarray) -> bytes | None:
    """The image as the JPEG a client would send (quality 90); None without OpenCV."""
    try:
        import cv2
    except ImportError:
        return None
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes() if ok else None


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "min": float(ms.min()),
            "mean": float(ms.mean()), "n": int(ms.size)}


# ------------------------------------------------------------------------------------------------ measuring


class StageTimer:
    """One runner's timed stages on one image (see the module docstring). `iteration()` runs every
    stage once; the caller interleaves the iterations of several timers, so that the machine's
    drift (other processes, clocks) falls on every backend alike and ratios stay fair."""

    STAGES = ("detector", "nms", "nms_full", "e2e", "e2e_keypoints", "pipeline")

    def __init__(self, runner, image: np.ndarray, jpeg: bytes | None, inference: InferenceConfig,
                 faces: list[int], e2e_faces: int):
        self.runner, self.inference, self.faces, self.e2e_faces = runner, inference, faces, e2e_faces
        self.full = dataclasses.replace(inference, score_threshold=0.0)
        self.x = runner.prepare(image)
        self.jpeg = jpeg
        self.run_pipeline = runner.pipeline() if jpeg is not None else None
        with torch.no_grad():
            scores, boxes, _ = runner.detect(self.x)
            runner.sync()
            self.num_candidates = int(scores.shape[1])
            self.real = runner.num_real(scores[0])
            if max(faces) > self.real:
                raise ValueError(f"--faces {max(faces)} > the {self.real} real candidates of this input: "
                                 "use a larger size")
            self.top_rois = runner.rois(boxes[0], runner.first(max(faces)))
        self.t: dict[str, list[float]] = {k: [] for k in self.STAGES}
        self.kp: dict[int, list[float]] = {f: [] for f in faces}
        self.kept_counts: list[int] = []
        self.full_counts: list[int] = []

    def iteration(self, record: bool, part: str = "stages") -> None:
        """One timing of `part`: "stages" (detector ... e2e) or "pipeline" (one request, JPEG in).
        run_interleaved times every backend's stages first and their pipelines in a pass of their own,
        so that no pipeline request follows its backend's stage calls: for Triton those go to other
        models of the same server (maskface_detector, maskface_keypoints: 11 MB over HTTP each round),
        and a pipeline request right after them took 1.066x the in-process pipeline against 1.049x
        without them (throw-away probe, demo model, 2-core Zen 5, 40 rounds each, interleaved), where
        the in-process pipeline took the same time after its own stage calls as without them."""
        if part == "pipeline":
            self._time_pipeline(record)
            return
        runner, faces = self.runner, self.faces
        with torch.no_grad():
            # One untimed detector call first: the backend timed before this one left the caches full
            # of its own weights and maps (measured without it, demo model: the torch-fp32 detector
            # stage took 283 ms median, more than that backend's whole pipeline, 253 ms, a moment later).
            runner.detect(self.x)
            runner.sync()
            t0 = time.perf_counter()
            scores, boxes, features = runner.detect(self.x)
            runner.sync()
            t1 = time.perf_counter()
            kept = runner.select(scores[0], boxes[0], self.inference)
            runner.sync()
            t2 = time.perf_counter()
            if self.e2e_faces:
                runner.keypoints(features, runner.rois(boxes[0], runner.fill(kept, self.num_candidates,
                                                                             self.e2e_faces)))
            runner.sync()
            t3 = time.perf_counter()
            kept_all = runner.select(scores[0], boxes[0], self.full)
            runner.sync()
            t4 = time.perf_counter()
            sweep = {}
            for f in faces:
                s0 = time.perf_counter()
                runner.keypoints(features, self.top_rois[:f])
                runner.sync()
                sweep[f] = time.perf_counter() - s0
            del scores, boxes, features
        if not record:
            return
        self.t["detector"].append(t1 - t0)
        self.t["nms"].append(t2 - t1)
        self.t["e2e_keypoints"].append(t3 - t2)
        self.t["e2e"].append(t3 - t0)
        self.t["nms_full"].append(t4 - t3)
        for f in faces:
            self.kp[f].append(sweep[f])
        self.kept_counts.append(len(kept))
        self.full_counts.append(len(kept_all))

    def _time_pipeline(self, record: bool) -> None:
        if self.run_pipeline is None:
            return
        # One untimed request first, as for the detector: the backend timed before this one left the
        # caches full of its own weights and maps. Then it is timed as a request arriving at an idle
        # machine: the call just before leaves worker threads spin-waiting (ONNX Runtime, OpenMP, TBB)
        # and, for Triton, the server busy with its response.
        with torch.no_grad():
            self.run_pipeline(self.jpeg)
            self.runner.sync()
            time.sleep(PIPELINE_SETTLE_S)
            p0 = time.perf_counter()
            self.run_pipeline(self.jpeg)
            self.runner.sync()
            pipeline = time.perf_counter() - p0
        if record:
            self.t["pipeline"].append(pipeline)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: (summarize(v) if v else None) for k, v in self.t.items()}
        out["keypoints"] = {str(f): {"total_ms": summarize(self.kp[f]),
                                     "per_face_ms": summarize([s / f for s in self.kp[f]])} for f in self.faces}
        # per-run times of the stages compared across backends: round i of two interleaved timers ran
        # side by side, so latency_report can pair them (paired_ratio)
        out["runs_ms"] = {k: [t * 1e3 for t in self.t[k]] for k in PAIRED_STAGES if self.t[k]}
        out["nms_kept"] = int(np.median(self.kept_counts))
        out["nms_full_kept"] = int(np.median(self.full_counts))
        out["nms_full_candidates"] = self.real
        out["num_candidates"] = self.num_candidates
        return out


#: The passes of run_interleaved, in order (StageTimer.iteration's `part`).
PARTS = ("stages", "pipeline")
#: Seed of the per-round backend order (the same sequence of orders on every run).
ORDER_SEED = 0


def run_interleaved(timers: dict[str, StageTimer], runs: int, warmup: int, tick: Callable[[], None],
                    interleave: bool = True) -> dict[str, dict[str, Any] | Exception]:
    """Each of PARTS in a pass of its own: warm-up then timed iterations; interleaved: round r runs
    every timer once, in a seeded random order, so that no backend always follows the same one (a
    rotating start left each behind its list predecessor in all but one of every n rounds: the Triton
    row, last in the list, came after PyTorch BF16's threads in 34 of 40). Otherwise one timer after
    another. tick() once per step: 2 x (warmup + runs) per timer. A timer that fails is reported as
    its exception; the others go on."""
    names = list(timers)
    failed: dict[str, Exception] = {}
    orders = np.random.default_rng(ORDER_SEED)

    def step(name: str, record: bool, part: str) -> None:
        if name not in failed:
            try:
                timers[name].iteration(record, part)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory, a server gone
                failed[name] = exc
        tick()

    for part in PARTS:
        if interleave:
            for i in range(warmup + runs):
                for k in orders.permutation(len(names)):
                    step(names[k], i >= warmup, part)
        else:
            for name in names:
                for i in range(warmup + runs):
                    step(name, i >= warmup, part)
    return {name: failed.get(name) or timers[name].result() for name in names}


def measure(runner, image: np.ndarray, inference: InferenceConfig, faces: list[int], e2e_faces: int,
            runs: int, warmup: int, tick: Callable[[], None], jpeg: bytes | None = None) -> dict[str, Any]:
    """Time one runner's stages (see the module docstring); returns the row's timing part."""
    result = run_interleaved({"_": StageTimer(runner, image, jpeg, inference, faces, e2e_faces)}, runs, warmup, tick)
    if isinstance(result["_"], Exception):
        raise result["_"]
    return result["_"]


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


def make_row(args: argparse.Namespace, env: dict[str, Any], preset: str, size: tuple[int, int], model: MaskFace,
             backend: str, runner, precision: str, trained: bool, timing: dict[str, Any],
             checkpoint: str | None) -> dict[str, Any]:
    notes = []
    if not trained:
        notes.append("untrained weights: NMS at the configured threshold keeps (almost) no face, so "
                     "`NMS all candidates` shows the NMS cost and e2e tops its faces up with candidates")
    if backend.startswith("onnxruntime"):
        notes.append("onnxruntime keypoint graph (portable): standard RoiAlign nodes; GFLOP/s counts the model's "
                     "FP32 work only (effective rate for the INT8 row)")
    if backend == "torch-fp16-cudagraph":
        notes.append("CUDA graph covers backbone + FPN + context + head convs at the fixed input shape; "
                     "top-k/decoding, NMS and the keypoint head run eagerly")
    if backend == "triton-cpu":
        notes.append("triton-cpu: stage columns call maskface_detector / maskface_keypoints over HTTP (the context "
                     "maps travel to the client and back); `pipeline` is one request to the maskface ensemble "
                     "(JPEG in, faces out) at concurrency 1, the figure to compare with the in-process pipelines")
    size_name = f"{size[0]}x{size[1]}"
    return {
        "backbone": preset, "backbone_name": BACKBONE_NAMES.get(preset, preset),
        "size": size_name, "input_hw": list(input_hw(size, model.cfg)), "backend": backend,
        "engine": runner.engine, "precision": precision, "device_kind": args.device,
        "device_name": env["device_name"], "threads": args.threads, "batch": 1,
        "trained": trained, "checkpoint": checkpoint, "seed": None if trained else args.seed,
        "runs": args.runs, "warmup": args.warmup, "preprocess_included": False, "interleaved": args.interleave,
        "e2e_faces": args.e2e_faces,
        "detector_ms": timing["detector"], "nms_ms": timing["nms"], "nms_full_ms": timing["nms_full"],
        "nms_kept": timing["nms_kept"], "nms_full_kept": timing["nms_full_kept"],
        "nms_full_candidates": timing["nms_full_candidates"],
        "num_candidates": timing["num_candidates"], "keypoints": timing["keypoints"],
        "e2e_keypoints_ms": timing["e2e_keypoints"], "e2e_ms": timing["e2e"], "pipeline_ms": timing["pipeline"],
        "runs_ms": timing.get("runs_ms", {}), "checks": dict(runner.checks), "notes": notes,
    }


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
            "pipeline_ms": "the whole pipeline on the image's JPEG (decode ... original pixels), as a user calls it; "
                           "triton-cpu: one ensemble request at concurrency 1",
            "vs_onnxruntime_fp32": "time / the onnxruntime (FP32) row of the same backbone, size and run",
            "preprocess_ms": "JPEG decode + maskface.preprocess.prepare_image on the CPU, not part of e2e",
            "gflops_achieved": "counted model GFLOP (torch.utils.flop_counter, 2 FLOPs per multiply-add) / median s",
            "peak_fraction": "gflops_achieved / environment.peak.gflops (measured: a 3x3 conv and an sgemm at the same threads, benchmarks/hardware.py; or --peak-gflops)",
        },
        "preprocess_ms": preprocess,
        "paper_table7": [dict(p) for p in PAPER_TABLE7],
        "rows": rows,
        "ratios": ratios(rows),
        "vs_onnxruntime_fp32": vs_onnxruntime_fp32(rows, CPU_GOALS),
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

    per_combo = len(PARTS) * (args.warmup + args.runs)
    progress = _Progress(len(args.backbones) * len(args.backends) * len(args.sizes) * per_combo,
                         not args.no_progress)
    log = progress.write
    log(f"latency: {env['device_name']}, {args.threads} threads, backends {', '.join(args.backends)}, "
        f"{args.runs} runs after {args.warmup} warm-up")

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    preprocess: dict[str, dict[str, float]] = {}
    images = {size: sample_image(size) for size in args.sizes}
    jpegs = {size: encode_jpeg(images[size]) for size in args.sizes}
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
        checkpoint = model_checkpoint(name, args.checkpoint)
        model, trained = load_model(name, checkpoint, args.seed)
        preset = model.cfg.name
        for size in args.sizes:
            if f"{size[0]}x{size[1]}" not in preprocess:
                preprocess[f"{size[0]}x{size[1]}"] = time_preprocess(images[size], model.cfg, args.runs)
        key_cache: dict[str, Any] = {}

        def key(model: MaskFace = model, key_cache: dict[str, Any] = key_cache) -> str:
            if "key" not in key_cache:
                key_cache["key"] = model_key(model.cfg, args.seed, checkpoint)
            return key_cache["key"]

        def onnx_paths(model: MaskFace = model, key_cache: dict[str, Any] = key_cache) -> dict[str, Path]:
            if "paths" not in key_cache:
                key_cache["paths"] = cached_onnx_export(model, key(), cache_dir, log)
            return key_cache["paths"]

        work = {size: count_gflop(model.cfg, input_hw(size, model.cfg)) for size in args.sizes}
        runners: dict[str, tuple[Any, str]] = {}
        for backend in args.backends:
            progress.describe(f"{preset} {backend} (setup)")
            try:
                k = key() if backend in ("onnxruntime", "tensorrt-fp16") else ""
                runners[backend] = make_runner(backend, model, args, k, onnx_paths, log, checkpoint)
            except Exception as exc:  # Skip, or a setup failure (export, session, engine): a reason, not a crash
                reason = str(exc) if isinstance(exc, Skip) else f"setup failed: {type(exc).__name__}: {exc}"
                skipped.append({"backbone": preset, "backend": backend, "reason": reason})
                log(f"latency: skipping {backend} for {preset}: {reason}")
                progress.update(per_combo * len(args.sizes))
        try:
            for size in args.sizes:
                size_name = f"{size[0]}x{size[1]}"
                progress.describe(f"{preset} {size_name} " + ("interleaved" if args.interleave else "in turn"))
                image = prepare(images[size], model.cfg)
                timers = {}
                for backend, (runner, _) in runners.items():
                    try:
                        timers[backend] = StageTimer(runner, image, jpegs[size], model.cfg.inference, args.faces,
                                                     args.e2e_faces)
                    except (RuntimeError, ValueError) as exc:  # e.g. out of memory, faces > candidates
                        skipped.append({"backbone": preset, "backend": backend,
                                        "reason": f"{size_name}: {type(exc).__name__}: {exc}"})
                        log(f"latency: {preset} {backend} {size_name} failed: {exc}")
                        progress.update(per_combo)
                results = run_interleaved(timers, args.runs, args.warmup, progress.update, args.interleave)
                for backend, timing in results.items():
                    if isinstance(timing, Exception):
                        skipped.append({"backbone": preset, "backend": backend,
                                        "reason": f"{size_name}: {type(timing).__name__}: {timing}"})
                        continue
                    runner, precision = runners[backend]
                    row = make_row(args, env, preset, size, model, backend, runner, precision, trained, timing,
                                   checkpoint)
                    add_rates(row, work[size], env["peak"]["gflops"])
                    rows.append(row)
                    write(final=False)
                    log(f"latency: {preset} {size_name} {backend}: detector {row['detector_ms']['median']:.2f} ms, "
                        f"e2e {row['e2e_ms']['median']:.2f} ms (median)")
        finally:
            for runner, _ in runners.values():
                runner.close()
            runners.clear()
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
