"""The logic of the Triton ensemble's Python-backend models, as plain numpy functions.

`triton_models/*/1/model.py` are thin adapters: they read their config.pbtxt parameters, call the
stage objects below and turn exceptions into error responses. The stages themselves call the
library (maskface.preprocess, maskface.pipeline.select_candidates) so the server runs exactly the
stages of maskface.pipeline.Pipeline (what Predictor / OnnxPredictor run), testable in-process.

Tensors between the stages (all per request, batch 1; see triton_models/README.md):

    preprocess   IMAGE uint8 [n]  ->  images f32 [1,3,H,W], scale_xy f64 [2], original_size i32 [2]
    detector     images           ->  scores [1,k], boxes [1,k,4], m2..m6 [1,C,H/s,W/s]
    nms          scores, boxes    ->  rois f32 [N,5] (batch index 0, x1, y1, x2, y2), det_scores [N]
    keypoints    m2..m6, rois     ->  landmarks [N,K,2], landmark_scores [N,K]
    postprocess  everything above ->  BOXES [N,4], SCORES [N], LANDMARKS [N,K,2], LANDMARK_SCORES [N,K]
"""
from __future__ import annotations

import abc
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..config import InferenceConfig, InputConfig
from ..contracts import FEATURE_NAMES, FEATURE_STRIDES
from ..pipeline import rois_of
from ..preprocess import MAX_INPUT_PIXELS, Prepared, decode_image, prepare_image



class RequestError(ValueError):
    """A problem with the client's request (answered with INVALID_ARG); the server stays healthy."""


# ----------------------------------------------------------------------------- parameters


class Parameters:
    """The `parameters { key: ... value: { string_value: ... } }` of a model config, typed."""

    def __init__(self, values: Mapping[str, str], model_name: str = "model"):
        self.values = dict(values)
        self.model_name = model_name

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any] | str) -> "Parameters":
        config = json.loads(model_config) if isinstance(model_config, str) else model_config
        raw = config.get("parameters", {}) or {}
        values = {k: (v.get("string_value", "") if isinstance(v, Mapping) else str(v)) for k, v in raw.items()}
        return cls(values, config.get("name", "model"))

    def _get(self, key: str, default: Any, convert: Callable[[str], Any]):
        if key not in self.values or self.values[key] == "":
            if default is _REQUIRED:
                raise ValueError(f"{self.model_name}: config.pbtxt parameter {key!r} is missing")
            return default
        try:
            return convert(self.values[key])
        except ValueError as exc:
            raise ValueError(f"{self.model_name}: config.pbtxt parameter {key!r} = {self.values[key]!r}: "
                             f"{exc}") from None

    def get_str(self, key: str, default: Any = None) -> str:
        return self._get(key, _REQUIRED if default is None else default, str)

    def get_int(self, key: str, default: Any = None) -> int:
        return self._get(key, _REQUIRED if default is None else default, int)

    def get_float(self, key: str, default: Any = None) -> float:
        return self._get(key, _REQUIRED if default is None else default, float)

    def get_floats(self, key: str, default: Any = None) -> tuple[float, ...]:
        return self._get(key, _REQUIRED if default is None else default,
                         lambda s: tuple(float(x) for x in s.replace(",", " ").split()))


_REQUIRED = object()


# ----------------------------------------------------------------------------- image limits


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
ACCEPTED_FORMATS = "JPEG or PNG"


def _byte_view(data: bytes | memoryview | np.ndarray) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data, np.uint8).reshape(-1))
    return memoryview(data).cast("B")


def image_format(data: bytes | memoryview | np.ndarray) -> str | None:
    """'png' or 'jpeg' from the file signature; None for anything else (WebP, TIFF, BMP, GIF, ...)."""
    buf = _byte_view(data)
    if bytes(buf[:8]) == PNG_SIGNATURE:
        return "png"
    if bytes(buf[:3]) == JPEG_SIGNATURE:
        return "jpeg"
    return None


def encoded_image_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding; None if not recognised.

    Lets the server refuse a decompression bomb (a few kB that decode to gigapixels) before
    OpenCV allocates the pixels. The JPEG marker walk covers the whole buffer (APPn segments
    may push the frame header far in), jumping from segment to segment without copying.
    """
    buf = _byte_view(data)
    if bytes(buf[:8]) == PNG_SIGNATURE and len(buf) >= 24 and bytes(buf[12:16]) == b"IHDR":
        width, height = struct.unpack_from(">II", buf, 16)
        return int(width), int(height)
    if bytes(buf[:2]) == b"\xff\xd8":
        i = 2
        while i + 4 <= len(buf):
            if buf[i] != 0xFF:
                return None
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                i += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                return None
            (length,) = struct.unpack_from(">H", buf, i + 2)
            # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if i + 9 > len(buf):
                    return None
                height, width = struct.unpack_from(">HH", buf, i + 5)
                return int(width), int(height)
            i += 2 + length
    return None


@dataclass
class PreprocessOutput:
    images: np.ndarray  # float32 [1, 3, H, W]
    scale_xy: np.ndarray  # float64 [2]: resized / original along x and y
    original_size: np.ndarray  # int32 [2]: (height, width) of the decoded image


class Preprocessor:
    """Encoded JPEG/PNG bytes -> the detector's input, with the serving limits enforced."""

    def __init__(self, max_side: int | None = 640, max_image_pixels: int = MAX_INPUT_PIXELS,
                 max_request_bytes: int = 32 << 20, input_cfg: InputConfig | None = None):
        if max_image_pixels < 1 or max_image_pixels > MAX_INPUT_PIXELS:
            raise ValueError(f"max_image_pixels must be in 1..{MAX_INPUT_PIXELS} "
                             "(maskface.preprocess.MAX_INPUT_PIXELS)")
        if max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        self.max_side = max_side
        self.max_image_pixels = int(max_image_pixels)
        self.max_request_bytes = int(max_request_bytes)
        self.input_cfg = input_cfg or InputConfig()

    @classmethod
    def from_parameters(cls, p: Parameters) -> "Preprocessor":
        max_side = p.get_int("max_side", 640)
        cfg = InputConfig(pixel_mean=p.get_floats("pixel_mean", InputConfig().pixel_mean),
                          pixel_std=p.get_floats("pixel_std", InputConfig().pixel_std),
                          size_divisibility=p.get_int("size_divisibility", InputConfig().size_divisibility))
        return cls(max_side if max_side > 0 else None, p.get_int("max_image_pixels", MAX_INPUT_PIXELS),
                   p.get_int("max_request_bytes", 32 << 20), cfg)

    def __call__(self, encoded: np.ndarray) -> PreprocessOutput:
        image = self.decode(encoded)
        try:
            prepared = prepare_image(image, self.input_cfg, self.max_side)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return PreprocessOutput(
            images=prepared.image[None],
            scale_xy=np.asarray(prepared.scale_xy, np.float64),
            original_size=np.asarray(prepared.original_size, np.int32),
        )

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """The request's BGR uint8 image, after every limit on the request and its header was checked."""
        encoded = np.asarray(encoded)
        if encoded.dtype != np.uint8:
            raise RequestError(f"IMAGE must be UINT8 encoded image bytes, got {encoded.dtype}")
        if encoded.ndim != 1:
            raise RequestError(f"IMAGE must be a 1-D byte array [n], got shape {list(encoded.shape)}")
        if encoded.size == 0:
            raise RequestError("empty request: IMAGE holds no bytes (send an encoded JPEG or PNG)")
        if encoded.size > self.max_request_bytes:
            raise RequestError(f"IMAGE of {encoded.size} bytes exceeds the limit of {self.max_request_bytes} bytes "
                               "(parameter max_request_bytes)")
        # Exactly the contract's formats, and their pixel count read from the header: OpenCV would
        # otherwise fully decode WebP/TIFF/BMP/... bombs before any size could be checked.
        kind = image_format(encoded)
        if kind is None:
            head = bytes(_byte_view(encoded)[:8]).hex(" ")
            raise RequestError(f"IMAGE is not a {ACCEPTED_FORMATS} file (first bytes {head}); "
                               f"send the encoded {ACCEPTED_FORMATS} file as it is")
        size = encoded_image_size(encoded)
        if size is None:
            raise RequestError(f"could not read the image size from the {kind.upper()} header of {encoded.size} "
                               "bytes (truncated or corrupt file)")
        self._check_pixels(*size)
        try:
            image = decode_image(encoded)
        except ValueError as exc:
            raise RequestError(f"{exc}") from None
        self._check_pixels(image.shape[1], image.shape[0])
        return image

    def _check_pixels(self, width: int, height: int) -> None:
        if width < 1 or height < 1:
            raise RequestError(f"image of {width}x{height} pixels is empty")
        if width * height > self.max_image_pixels:
            raise RequestError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                               f"{self.max_image_pixels} pixels (parameter max_image_pixels)")


# ----------------------------------------------------------------------------- bounds of the sub-models




@dataclass(frozen=True)
class InputBounds:
    """What the preprocess and NMS stages can produce, so that every sub-model called directly
    refuses anything beyond what the ensemble would hand it (sizes, ROI count, coordinates)."""

    max_side: int = 640  # 0 = no resize
    size_divisibility: int = 64
    max_image_pixels: int = MAX_INPUT_PIXELS
    max_detections: int = InferenceConfig.max_detections

    def __post_init__(self):
        if self.max_side < 0 or self.size_divisibility < 1 or self.max_image_pixels < 1 or self.max_detections < 1:
            raise ValueError(f"invalid serving bounds {self}")

    @classmethod
    def from_parameters(cls, p: Parameters) -> "InputBounds":
        d = cls()
        return cls(max_side=p.get_int("max_side", d.max_side),
                   size_divisibility=p.get_int("size_divisibility", d.size_divisibility),
                   max_image_pixels=p.get_int("max_image_pixels", d.max_image_pixels),
                   max_detections=p.get_int("max_detections", d.max_detections))

    def _pad(self, n: int) -> int:
        return -(-n // self.size_divisibility) * self.size_divisibility

    @property
    def max_input_side(self) -> int:
        """The longest side of a preprocessed (resized, padded) image."""
        return self._pad(self.max_side) if self.max_side else self._pad(self.max_image_pixels)

    def check_input_size(self, height: int, width: int, what: str = "images") -> None:
        """H x W of a detector input: multiples of size_divisibility, no larger than a preprocessed image."""
        div = self.size_divisibility
        if height < div or width < div or height % div or width % div:
            raise RequestError(f"{what}: {height}x{width} must be positive multiples of {div} "
                               "(the preprocess stage pads to them)")
        if self.max_side:
            if max(height, width) > self.max_input_side:
                raise RequestError(f"{what}: {height}x{width} exceeds {self.max_input_side} px per side "
                                   f"(max_side={self.max_side} padded to a multiple of {div})")
        elif (height - div + 1) * (width - div + 1) > self.max_image_pixels:  # smallest original padding to it
            raise RequestError(f"{what}: {height}x{width} exceeds the limit of {self.max_image_pixels} pixels "
                               "(parameter max_image_pixels)")

    def check_images(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise RequestError(f"images must be [B, 3, H, W], got {list(images.shape)}")
        self.check_input_size(int(images.shape[2]), int(images.shape[3]))
        if not np.isfinite(images).all():
            raise RequestError("images holds NaN or infinite values")

    def check_features(self, features: Sequence[np.ndarray]) -> tuple[int, int, int]:
        """m2..m6 of one detector run: equal batch and channels, each level half the previous one.
        Returns (batch, input height, input width)."""
        m2 = features[0]
        if m2.ndim != 4:
            raise RequestError(f"m2 must be [B, C, H/4, W/4], got {list(m2.shape)}")
        batch, channels, h2, w2 = (int(v) for v in m2.shape)
        height, width = h2 * FEATURE_STRIDES[0], w2 * FEATURE_STRIDES[0]
        self.check_input_size(height, width, "m2..m6 (input size = 4 x the m2 size)")
        for name, stride, m in zip(FEATURE_NAMES, FEATURE_STRIDES, features):
            expected = (batch, channels, -(-height // stride), -(-width // stride))
            if tuple(m.shape) != expected:
                raise RequestError(f"{name} has shape {list(m.shape)}, expected {list(expected)} "
                                   f"(stride {stride} of a {height}x{width} input)")
        return batch, height, width

    def check_boxes(self, boxes: np.ndarray, what: str, height: int | None = None, width: int | None = None) -> None:
        """[N, 4] x1, y1, x2, y2: finite, ordered and inside the (padded) input image, as the
        detector's clipped boxes are."""
        if boxes.size == 0:
            return
        if not np.isfinite(boxes).all():
            raise RequestError(f"{what}: coordinates must be finite (NaN or infinity found)")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise RequestError(f"{what}: every box needs x1 <= x2 and y1 <= y2")
        width = self.max_input_side if width is None else width
        height = self.max_input_side if height is None else height
        if boxes.min() < 0 or boxes[:, 0::2].max() > width or boxes[:, 1::2].max() > height:
            raise RequestError(f"{what}: coordinates must lie inside the {height}x{width} px input image")

    def check_rois(self, rois: np.ndarray, batch: int, height: int | None = None, width: int | None = None) -> None:
        if rois.ndim != 2 or rois.shape[1] != 5:
            raise RequestError(f"rois must be [N, 5], got {list(rois.shape)}")
        if rois.shape[0] > self.max_detections:
            raise RequestError(f"{rois.shape[0]} rois exceed the limit of {self.max_detections} "
                               "(parameter max_detections, what the NMS stage keeps at most)")
        index = rois[:, 0]
        if not np.isfinite(index).all() or (index != np.round(index)).any() or (index < 0).any() \
                or (index >= batch).any():
            raise RequestError(f"rois[:, 0] must be whole batch indices in 0..{batch - 1}")
        self.check_boxes(rois[:, 1:5], "rois", height, width)

    def check_mapping(self, scale_xy: np.ndarray, original_size: np.ndarray) -> tuple[float, float, int, int]:
        """scale_xy (resized / original, x and y) and original_size (h, w) as preprocess makes them."""
        scale_xy, original_size = np.asarray(scale_xy, np.float64), np.asarray(original_size)
        if scale_xy.shape != (2,) or original_size.shape != (2,):
            raise RequestError(f"scale_xy and original_size must hold 2 values, got {list(scale_xy.shape)} "
                               f"and {list(original_size.shape)}")
        height, width = (int(v) for v in original_size)
        if height < 1 or width < 1 or height * width > self.max_image_pixels:
            raise RequestError(f"original_size {height}x{width} must be positive and at most "
                               f"{self.max_image_pixels} pixels (parameter max_image_pixels)")
        sx, sy = (float(v) for v in scale_xy)
        if not (np.isfinite(sx) and np.isfinite(sy) and sx > 0 and sy > 0):
            raise RequestError(f"scale_xy ({sx}, {sy}) must be finite and positive")
        # The resized image (original x scale) must fit the detector input, as preprocess guarantees.
        if max(round(width * sx), round(height * sy)) > self.max_input_side:
            raise RequestError(f"scale_xy ({sx}, {sy}) x original_size {height}x{width} exceeds the "
                               f"{self.max_input_side} px input")
        return sx, sy, height, width


def check_detector_outputs(scores: np.ndarray, boxes: np.ndarray, bounds: InputBounds) -> None:
    if not np.isfinite(scores).all():
        raise RequestError("scores must be finite (NaN or infinity found)")
    bounds.check_boxes(boxes.reshape(-1, 4), "boxes")


# ----------------------------------------------------------------------------- NMS


class CandidateSelector:
    """Score threshold + NMS + max detections on one image's candidates (maskface.postprocess)."""

    def __init__(self, cfg: InferenceConfig | None = None, bounds: InputBounds | None = None):
        from ..pipeline import select_candidates  # imports torch/torchvision when called: only the NMS model

        self.cfg = cfg or InferenceConfig()
        self.bounds = bounds or InputBounds(max_detections=self.cfg.max_detections)
        self._select = select_candidates

    @classmethod
    def from_parameters(cls, p: Parameters) -> "CandidateSelector":
        default = InferenceConfig()
        cfg = InferenceConfig(score_threshold=p.get_float("score_threshold", default.score_threshold),
                              pre_nms_topk=p.get_int("pre_nms_topk", default.pre_nms_topk),
                              nms_threshold=p.get_float("nms_threshold", default.nms_threshold),
                              max_detections=p.get_int("max_detections", default.max_detections))
        return cls(cfg, InputBounds.from_parameters(p))

    def __call__(self, scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, np.float32)
        boxes = np.asarray(boxes, np.float32)
        if scores.ndim != 2 or scores.shape[0] != 1 or boxes.shape != (1, scores.shape[1], 4):
            raise RequestError(f"expected scores [1, k] and boxes [1, k, 4], got {list(scores.shape)} "
                               f"and {list(boxes.shape)}")
        check_detector_outputs(scores, boxes, self.bounds)
        keep = self._select(scores[0], boxes[0], self.cfg)
        rois = rois_of(boxes[0][keep])
        return rois.reshape(-1, 5), scores[0][keep].astype(np.float32).reshape(-1)


# ----------------------------------------------------------------------------- back to original pixels


def to_original_pixels(rois: np.ndarray, det_scores: np.ndarray, landmarks: np.ndarray, landmark_scores: np.ndarray,
                       scale_xy: np.ndarray, original_size: np.ndarray,
                       bounds: InputBounds | None = None) -> dict[str, np.ndarray]:
    """The ensemble's outputs: the same mapping as OnnxPredictor (maskface.preprocess.Prepared).
    Every input is checked against what the earlier stages can produce (`bounds`)."""
    bounds = bounds or InputBounds()
    rois = np.asarray(rois, np.float32)
    bounds.check_rois(rois, batch=1)
    n = rois.shape[0]
    det_scores = np.asarray(det_scores, np.float32)
    landmarks = np.asarray(landmarks, np.float32)
    landmark_scores = np.asarray(landmark_scores, np.float32)
    if det_scores.shape != (n,):
        raise RequestError(f"det_scores {list(det_scores.shape)} does not match {n} rois (one score per roi)")
    if (landmarks.ndim != 3 or landmarks.shape[0] != n or landmarks.shape[2] != 2
            or landmark_scores.shape != landmarks.shape[:2]):
        raise RequestError(f"landmarks {list(landmarks.shape)} / landmark_scores {list(landmark_scores.shape)} "
                           f"do not match {n} boxes")
    for name, values in (("det_scores", det_scores), ("landmarks", landmarks), ("landmark_scores", landmark_scores)):
        if not np.isfinite(values).all():
            raise RequestError(f"{name} must be finite (NaN or infinity found)")
    sx, sy, height, width = bounds.check_mapping(scale_xy, original_size)
    prepared = Prepared(image=np.empty((0,), np.float32), scale_xy=(sx, sy), original_size=(height, width))
    return {
        "BOXES": prepared.boxes_to_original(rois[:, 1:5]).reshape(n, 4),
        "SCORES": det_scores.reshape(n),
        "LANDMARKS": prepared.to_original(landmarks).astype(np.float32),
        "LANDMARK_SCORES": landmark_scores,
    }


def check_keypoint_inputs(feeds: Mapping[str, np.ndarray], bounds: InputBounds) -> None:
    """maskface_keypoints called directly: at most max_detections ROIs, inside the image the
    feature maps belong to (without this, N = 400 ROIs took 8.8 s and 450 MB)."""
    batch, height, width = bounds.check_features([np.asarray(feeds[name]) for name in FEATURE_NAMES])
    bounds.check_rois(np.asarray(feeds["rois"], np.float32), batch, height, width)


# ----------------------------------------------------------------------------- ONNX Runtime (cpu target)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a container or taskset allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def instance_count(model_config: Mapping[str, Any]) -> int:
    """How many instances of this model Triton runs (the sum over its instance_group entries)."""
    groups = model_config.get("instance_group") or [{"count": 1}]
    return max(1, sum(int(g.get("count", 1) or 1) for g in groups))


def threads_per_instance(cpu_threads: int, instances: int) -> int:
    """Intra-op threads of one graph instance: cpu_threads if given, else the available CPUs shared
    among the instances. Always explicit: ONNX Runtime's own default inside a Triton stub is not
    what the server's CPUs allow (issue #15 measured its worker pinned to one CPU)."""
    if cpu_threads < 0:
        raise ValueError(f"cpu_threads={cpu_threads} must be >= 0")
    return cpu_threads or max(1, available_cpus() // max(1, instances))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_buffers_in_heap(limit_bytes: int = 64 << 20) -> bool:
    """In a stub that runs the graphs: keep the per-request arrays (image tensor, context maps: MBs each)
    in the heap for reuse, up to `limit_bytes` each and `limit_bytes` free at the heap top.

    The server's MALLOC_MMAP_THRESHOLD_ (maskface.serving.server: request buffers go back to the OS)
    reaches every stub, where it made each request map and unmap its arrays afresh: demo model, one
    640x480 request in process, 4,082 page faults and 8.4 ms of system CPU with it, 0 and 0.2 ms after
    this call. Returns False where glibc's mallopt is not available (nothing changed)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its default (dynamic) thresholds apply
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(limit_bytes)) and mallopt(_M_TRIM_THRESHOLD, int(limit_bytes)))


class BatchedRuns(abc.ABC):
    """run_batched() on top of run(feeds) for a graph of `input_names` whose inputs batch on dim 0."""

    input_names: list[str]

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the graph: input name -> array in, output name -> array out."""

    def run_transient(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """run() into arrays the model may keep and overwrite on its next call (reused_outputs);
        this default is run() itself."""
        return self.run(feeds)

    def require_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """RequestError naming the graph inputs that `feeds` lacks."""
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise RequestError(f"missing inputs {sorted(missing)}")

    def run_batched(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray] | Exception]:
        """Run requests of equal input shapes as one batch (concatenated on dim 0), split the results.

        What Triton's dynamic batcher hands the detector: several requests in one execute() call.
        Requests whose shapes differ run as separate groups; a failing group fails only its requests.
        """
        groups: dict[tuple, list[int]] = {}
        for i, feeds in enumerate(requests):
            key = tuple((name, np.asarray(feeds[name]).shape) for name in self.input_names if name in feeds)
            groups.setdefault(key, []).append(i)
        results: list[dict[str, np.ndarray] | Exception] = [None] * len(requests)  # type: ignore[list-item]
        for indices in groups.values():
            try:
                if len(indices) == 1:
                    results[indices[0]] = self.run(requests[indices[0]])
                    continue
                sizes = [int(np.asarray(requests[i][self.input_names[0]]).shape[0]) for i in indices]
                feeds = {name: np.concatenate([requests[i][name] for i in indices]) for name in self.input_names}
                out = self.run(feeds)
                offsets = np.cumsum([0] + sizes)
                for j, i in enumerate(indices):
                    results[i] = {k: v[offsets[j]:offsets[j + 1]] for k, v in out.items()}
            except Exception as exc:  # noqa: BLE001 - reported per request
                # Without its traceback: the frames would keep the inputs (Triton's shared memory) alive.
                for i in indices:
                    results[i] = exc.with_traceback(None)
        return results


class OnnxModel(BatchedRuns):
    """One exported graph (FP32 or INT8) in ONNX Runtime, the `cpu` target's stand-in for a TensorRT plan."""

    def __init__(self, path: str | Path, threads: int | None = None):
        # ort_runtime imports onnxruntime only (no torch in the stubs that run graphs: seconds of start-up saved)
        from ..runtimes.ort_runtime import ort_session
        from ..runtimes.reused_outputs import ReusedOutputs

        self.threads = threads
        self.session = ort_session(path, int(threads) if threads else None)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._reused = ReusedOutputs(self.session)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.require_inputs(feeds)
        outputs = self.session.run(self.output_names, {k: np.ascontiguousarray(feeds[k]) for k in self.input_names})
        return dict(zip(self.output_names, outputs))

    def run_transient(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.require_inputs(feeds)
        outputs = self._reused.run_transient(self.output_names,
                                             {k: np.ascontiguousarray(feeds[k]) for k in self.input_names})
        return dict(zip(self.output_names, outputs))


def graph_model(args: Mapping[str, Any], model_config: Mapping[str, Any], part: str,
                file_parameter: str = "model_file") -> BatchedRuns:
    """The detector or keypoint graph of a cpu-target model, by its config.pbtxt parameters:
    `file_parameter` (the graph file), precision and cpu_threads. ONNX Runtime runs them, but for the
    detector at int8 / bf16: OpenVINO (maskface.runtimes.openvino_runtime)."""
    params = Parameters.from_model_config(model_config)
    precision = params.get_str("precision", "fp32")
    threads = threads_per_instance(params.get_int("cpu_threads", 0), instance_count(model_config))
    path = model_file(args, params.get_str(file_parameter))
    if precision not in ("fp32", "int8", "bf16"):
        raise ValueError(f"{params.model_name}: precision {precision!r} must be fp32, int8 or bf16")
    if part == "detector" and precision != "fp32":
        from .openvino_stage import OpenVinoModel

        return OpenVinoModel(path, precision, threads)
    return OnnxModel(path, threads)


# ----------------------------------------------------------------------------- Python-backend glue


def error_response(pb_utils, exc: BaseException):
    """An InferenceResponse carrying the error: INVALID_ARG for request problems, INTERNAL otherwise."""
    codes = getattr(pb_utils, "TritonError", None)
    if isinstance(exc, RequestError):
        message, code = str(exc), getattr(codes, "INVALID_ARG", None)
    else:
        message, code = f"{type(exc).__name__}: {exc}", getattr(codes, "INTERNAL", None)
    try:
        error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    except TypeError:  # older python backends: message only
        error = pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def input_arrays(pb_utils, request, names: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise RequestError(f"input {name!r} is missing")
        out[name] = tensor.as_numpy()
    return out


def output_response(pb_utils, outputs: Mapping[str, np.ndarray]):
    tensors = [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def respond(pb_utils, requests, inputs: Sequence[str], handler: Callable[..., Mapping[str, np.ndarray]]) -> list:
    """One response per request: handler(**inputs) -> outputs, or an error response for that request only."""
    responses = []
    for request in requests:
        try:
            responses.append(output_response(pb_utils, handler(**input_arrays(pb_utils, request, inputs))))
        except Exception as exc:  # noqa: BLE001 - every failure becomes that request's error response
            responses.append(error_response(pb_utils, exc))
    return responses


def model_file(args: Mapping[str, str], name: str) -> Path:
    """A file of a Python-backend model's version folder (args of TritonPythonModel.initialize)."""
    path = Path(name)
    if not path.is_absolute():
        path = Path(args["model_repository"]) / str(args["model_version"]) / path
    return path
