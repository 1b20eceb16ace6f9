"""Run the exported graphs with ONNX Runtime, stage by stage and end to end.

Used by the export parity checks, by the `cpu` Triton target's Python-backend models and by the
benchmarks. onnxruntime is imported lazily: the library itself never needs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import InferenceConfig, InputConfig
from ..contracts import FEATURE_NAMES
from ..postprocess import select_detections
from ..preprocess import prepare_image



def ort_session(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("onnxruntime is needed to run the ONNX graphs: pip install 'maskface[export]'") from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph {path} not found: run `python export/build_engines.py` first")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxGraphs:
    """detector.onnx + a portable keypoint_head graph in ONNX Runtime."""

    def __init__(self, detector: str | Path, keypoint_head: str | Path, threads: int | None = None,
                 providers: Sequence[str] | None = None):
        self.detector = ort_session(detector, threads, providers)
        self.keypoint_head = ort_session(keypoint_head, threads, providers)

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        scores, boxes, *features = self.detector.run(None, {"images": np.ascontiguousarray(images, np.float32)})
        return scores, boxes, features

    def keypoints(self, features: Sequence[np.ndarray], rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(zip(FEATURE_NAMES, features))
        feeds["rois"] = np.ascontiguousarray(rois, np.float32).reshape(-1, 5)
        landmarks, scores = self.keypoint_head.run(["landmarks", "landmark_scores"], feeds)
        return landmarks, scores


def nms_step(scores: np.ndarray, boxes: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """The pipeline's NMS stage on one image's candidates: indices kept, best first."""
    keep = select_detections(torch.from_numpy(np.asarray(scores)), torch.from_numpy(np.asarray(boxes)),
                             cfg.score_threshold, cfg.nms_threshold, cfg.max_detections)
    return keep.numpy()


class OnnxPredictor:
    """The whole pipeline (preprocess -> detector -> NMS -> keypoints -> original pixels) in ONNX
    Runtime; the same contract as maskface.engine.predictor.Predictor."""

    def __init__(self, graphs: OnnxGraphs, inference: InferenceConfig | None = None,
                 input_cfg: InputConfig | None = None, max_side: int | None = 640):
        self.graphs = graphs
        self.inference = inference or InferenceConfig()
        self.input_cfg = input_cfg or InputConfig()
        self.max_side = max_side

    def __call__(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        prepared = prepare_image(image_bgr, self.input_cfg, self.max_side)
        scores, boxes, features = self.graphs.detect(prepared.image[None])
        keep = nms_step(scores[0], boxes[0], self.inference)
        kept_boxes = boxes[0][keep]
        rois = np.concatenate([np.zeros((len(keep), 1), np.float32), kept_boxes], axis=1)
        landmarks, landmark_scores = self.graphs.keypoints(features, rois)
        return {
            "boxes": prepared.boxes_to_original(kept_boxes),
            "scores": scores[0][keep].astype(np.float32),
            "landmarks": prepared.to_original(landmarks).astype(np.float32),
            "landmark_scores": landmark_scores.astype(np.float32),
        }
