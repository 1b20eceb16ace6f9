"""The graphs of a running Triton server as a pipeline runtime: the maskface_detector and
maskface_keypoints models (ONNX Runtime on the cpu target, TensorRT plans on the tensorrt target)
called over HTTP with tritonclient; the selection step runs here, with the rule the server's
maskface_nms stage runs (maskface.pipeline.select_candidates). The ensemble itself is
maskface.serving.client.MaskFaceClient; this runtime lets the one pipeline drive the sub-models."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import InferenceConfig
from ..contracts import DETECTOR_INPUTS, DETECTOR_OUTPUTS, KEYPOINT_OUTPUTS
from ..pipeline import keypoint_feeds, select_candidates

DETECTOR_MODEL = "maskface_detector"
KEYPOINT_MODEL = "maskface_keypoints"


class TritonRuntime:
    def __init__(self, url: str, timeout: float = 60.0):
        try:
            import tritonclient.http as httpclient
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("tritonclient is needed to call a Triton server: pip install 'maskface[serving]'") from exc
        self._http = httpclient
        self.client = httpclient.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)

    def _infer(self, model: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        inputs = []
        for name, array in feeds.items():
            array = np.ascontiguousarray(array, np.float32)
            tensor = self._http.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        requested = [self._http.InferRequestedOutput(name, binary_data=True) for name in outputs]
        result = self.client.infer(model, inputs, outputs=requested)
        return [result.as_numpy(name) for name in outputs]

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        scores, boxes, *features = self._infer(DETECTOR_MODEL, {DETECTOR_INPUTS[0]: images}, DETECTOR_OUTPUTS)
        return scores, boxes, features

    def select(self, scores: np.ndarray, boxes: np.ndarray, inference: InferenceConfig) -> np.ndarray:
        return select_candidates(scores, boxes, inference)

    def keypoints(self, features: Sequence[np.ndarray], rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        landmarks, scores = self._infer(KEYPOINT_MODEL, keypoint_feeds(features, rois), KEYPOINT_OUTPUTS)
        return landmarks, scores

    def close(self) -> None:
        self.client.close()
