"""The cpu target's ensemble in one Python-backend process: maskface_pipeline, IMAGE in, faces out.

On the cpu target every graph runs inside a Python-backend stub anyway, so the ensemble's five steps
only add hand-offs between processes: the 4.9 MB image tensor and the 7 MB of context maps are copied
through Triton's shared memory, and five stubs wake up on the same few cores (demo model, 2 CPUs:
82.9 ms through the five steps against 56.9 ms in process). maskface_pipeline runs the same stage
objects in one process: Preprocessor.decode (every request limit), then maskface.pipeline.Pipeline
(preprocess, detector, NMS, keypoints, original pixels) over the two graph models that the separate
stages use (graph_model: ONNX Runtime, or OpenVINO for the detector at int8 / bf16). The separate
stages stay in the repository, callable one by one as on the tensorrt target.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..config import InferenceConfig
from ..contracts import FEATURE_NAMES, KEYPOINT_OUTPUTS
from ..pipeline import Pipeline, keypoint_feeds, select_candidates
from .stages import BatchedRuns, CandidateSelector, Parameters, Preprocessor, graph_model

ENSEMBLE_OUTPUTS = ("BOXES", "SCORES", "LANDMARKS", "LANDMARK_SCORES")


class StageGraphs:
    """maskface.pipeline's Runtime protocol over the cpu stages' detector and keypoint graph models."""

    def __init__(self, detector: BatchedRuns, keypoint_head: BatchedRuns):
        self.detector = detector
        self.keypoint_head = keypoint_head

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        return self._outputs(self.detector.run({"images": np.ascontiguousarray(images, np.float32)}))

    def detect_transient(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """detect() into arrays the detector model keeps (BatchedRuns.run_transient); what the pipeline calls."""
        return self._outputs(self.detector.run_transient({"images": np.ascontiguousarray(images, np.float32)}))

    @staticmethod
    def _outputs(out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        return out["scores"], out["boxes"], [out[name] for name in FEATURE_NAMES]

    def select(self, scores: np.ndarray, boxes: np.ndarray, inference: InferenceConfig) -> np.ndarray:
        return select_candidates(scores, boxes, inference)

    def keypoints(self, features: Sequence[np.ndarray], rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.keypoint_head.run(keypoint_feeds(features, rois))
        return tuple(out[name] for name in KEYPOINT_OUTPUTS)


class FusedPipeline:
    """Encoded JPEG/PNG bytes -> BOXES, SCORES, LANDMARKS, LANDMARK_SCORES in original pixels."""

    def __init__(self, preprocessor: Preprocessor, graphs: StageGraphs, inference: InferenceConfig):
        self.preprocessor = preprocessor
        self.pipeline = Pipeline(graphs, inference, preprocessor.input_cfg, preprocessor.max_side)

    @classmethod
    def from_model_config(cls, args: Mapping[str, Any], model_config: Mapping[str, Any]) -> "FusedPipeline":
        """From maskface_pipeline's config.pbtxt parameters: the preprocess, NMS and graph parameters of
        the separate stages, with the two graph files as detector_file and keypoint_file."""
        params = Parameters.from_model_config(model_config)
        graphs = StageGraphs(graph_model(args, model_config, "detector", "detector_file"),
                             graph_model(args, model_config, "keypoints", "keypoint_file"))
        return cls(Preprocessor.from_parameters(params), graphs, CandidateSelector.from_parameters(params).cfg)

    def __call__(self, IMAGE: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803 - the ensemble's tensor name
        out = self.pipeline(self.preprocessor.decode(IMAGE))
        values = (out["boxes"], out["scores"], out["landmarks"], out["landmark_scores"])
        return {name: np.asarray(v, np.float32) for name, v in zip(ENSEMBLE_OUTPUTS, values)}
