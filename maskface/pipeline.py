"""The inference pipeline, written once: preprocess -> detector graph -> select (threshold + NMS)
-> keypoint graph -> original pixels. What differs between PyTorch, ONNX Runtime, TensorRT and a
Triton server is only the runtime behind three calls (the `Runtime` protocol):

    detect(images [B, 3, H, W] float32 numpy) -> scores [B, k], boxes [B, k, 4], [m2..m6]
    select(scores [k], boxes [k, 4], inference) -> kept candidate indices, best first
    keypoints([m2..m6], rois [N, 5]) -> landmarks [N, K, 2], landmark_scores [N, K]

A runtime may also offer detect_transient(images), the same into arrays it keeps and overwrites on its
next such call (maskface.runtimes.reused_outputs): the pipeline reads the detector's outputs once
before its next detect, so it calls that where there is one.

Arrays stay in the runtime's own type (torch tensors on its device, or numpy) between the calls; the
pipeline only indexes them and converts the final outputs to numpy. Implementations:
maskface.runtimes (TorchRuntime, OrtRuntime, TritonRuntime) and export/engine_runner.TensorRTRuntime.

Importing this module loads neither torch nor cv2.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .config import InferenceConfig, InputConfig
from .contracts import FEATURE_NAMES


class Runtime(Protocol):
    def detect(self, images: np.ndarray) -> tuple[Any, Any, list[Any]]: ...

    def select(self, scores: Any, boxes: Any, inference: InferenceConfig) -> Any: ...

    def keypoints(self, features: Sequence[Any], rois: Any) -> tuple[Any, Any]: ...


def select_candidates(scores, boxes, inference: InferenceConfig):
    """The selection rule of every runtime (score threshold, degenerate boxes, NMS, max detections):
    maskface.postprocess.select_detections on one image's candidates, numpy or torch in, same out.
    Looked up at call time, so that a change there (or a test's patch) reaches every runtime."""
    import torch

    from . import postprocess

    as_numpy = not isinstance(scores, torch.Tensor)
    if as_numpy:
        # np.require copies only read-only arrays (a server response): torch wants writable memory
        scores, boxes = (torch.from_numpy(np.require(a, requirements="W")) for a in (scores, boxes))
    keep = postprocess.select_detections(scores, boxes, inference.score_threshold, inference.nms_threshold,
                                         inference.max_detections)
    return keep.numpy() if as_numpy else keep


def keypoint_feeds(features: Sequence[np.ndarray], rois, feature_names: Sequence[str] | None = None) -> dict:
    """The keypoint graph's inputs by name: m2..m6 and rois [N, 5] as contiguous float32 numpy."""
    feeds = dict(zip(feature_names or FEATURE_NAMES, features))
    feeds["rois"] = np.ascontiguousarray(rois, np.float32).reshape(-1, 5)
    return feeds


def as_numpy(x) -> np.ndarray:
    """numpy view of a runtime's array (a torch tensor on any device, or numpy)."""
    if isinstance(x, np.ndarray):
        return x
    return x.detach().cpu().numpy()


def pipeline_detect(runtime: Runtime) -> Callable:
    """The detector call a pipeline makes: detect_transient where the runtime has it (module doc)."""
    return getattr(runtime, "detect_transient", runtime.detect)


def rois_of(boxes, batch_index: int = 0):
    """rois [N, 5] (batch index, x1, y1, x2, y2) of boxes [N, 4], in the boxes' own array type."""
    if isinstance(boxes, np.ndarray):
        column = np.full((len(boxes), 1), batch_index, np.float32)
        return np.concatenate([column, boxes.astype(np.float32, copy=False)], axis=1)
    import torch

    return torch.cat([boxes.new_full((boxes.shape[0], 1), float(batch_index)), boxes], dim=1)


class Pipeline:
    """BGR uint8 image of any size -> dict of numpy arrays in original pixels:
    boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks [N, K, 2], landmark_scores [N, K].

    `max_side` resizes so the longer side is at most that many pixels (None keeps the original
    scale); `min_side` resizes so the shorter side is exactly that many pixels (the §4.2 landmark
    protocol: 640), capped by `max_side` when both are given; `scale` forces a scale factor (the
    test-time image pyramid). `with_landmarks=False` skips the keypoint head (landmarks [N, 0, 2]).
    """

    def __init__(self, runtime: Runtime, inference: InferenceConfig | None = None,
                 input_cfg: InputConfig | None = None, max_side: int | None = 640, min_side: int | None = None):
        self.runtime = runtime
        self._inference = inference or InferenceConfig()
        self.input_cfg = input_cfg or InputConfig()
        self.max_side = max_side
        self.min_side = min_side

    @property
    def inference(self) -> InferenceConfig:
        return self._inference

    def __call__(self, image_bgr: np.ndarray, scale: float | None = None,
                 with_landmarks: bool = True) -> dict[str, np.ndarray]:
        from .preprocess import prepare_image

        prepared = prepare_image(image_bgr, self.input_cfg, self.max_side, scale, self.min_side)
        scores, boxes, features = pipeline_detect(self.runtime)(prepared.image[None])
        keep = self.runtime.select(scores[0], boxes[0], self.inference)
        kept_boxes, kept_scores = boxes[0][keep], scores[0][keep]
        if with_landmarks:
            landmarks, landmark_scores = (as_numpy(a) for a in self.runtime.keypoints(features, rois_of(kept_boxes)))
        else:
            landmarks, landmark_scores = np.zeros((len(keep), 0, 2), np.float32), np.zeros((len(keep), 0), np.float32)
        return {
            "boxes": prepared.boxes_to_original(as_numpy(kept_boxes)),
            "scores": as_numpy(kept_scores).astype(np.float32).reshape(-1),
            "landmarks": prepared.to_original(landmarks).astype(np.float32),
            "landmark_scores": np.asarray(landmark_scores, np.float32),
        }
