"""Old home of the ONNX Runtime runtime, kept so that existing imports work: the code is in
maskface.runtimes.ort_runtime (OrtRuntime, formerly OnnxGraphs) and maskface.pipeline
(select_candidates, formerly nms_step)."""
from __future__ import annotations

from ..pipeline import select_candidates as nms_step  # noqa: F401
from ..runtimes.ort_runtime import OnnxPredictor, OrtRuntime, ort_session  # noqa: F401

OnnxGraphs = OrtRuntime
