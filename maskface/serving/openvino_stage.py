"""The cpu target's OpenVINO precisions: the detector graph in OpenVINO (bf16 on detector.onnx, int8 on
detector_int8.onnx), with the same tensors in and out as the ONNX Runtime stage. The keypoint stage
stays in ONNX Runtime (maskface.runtimes.openvino_runtime says why). Imported only by such a stage
(OpenVINO's start-up is paid there alone)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .stages import BatchedRuns


def check_openvino_serving(precision: str) -> None:
    """Refuse a precision this machine cannot run (OpenVINO missing, BF16 not native), as a one-line
    configuration error saying what to use instead."""
    from ..runtimes.openvino_runtime import OpenVinoUnavailableError, require_openvino_precision

    try:
        require_openvino_precision(precision)
    except OpenVinoUnavailableError as exc:
        raise ValueError(f"precision {precision}: {exc}") from None


class OpenVinoModel(BatchedRuns):
    """The detector graph in OpenVINO, compiled per input shape (the preprocess pads to multiples of 64,
    so few shapes occur)."""

    def __init__(self, path: str | Path, precision: str, threads: int | None = None):
        from ..runtimes.openvino_runtime import OpenVinoGraph, inference_hint

        check_openvino_serving(precision)
        self.threads, self.precision = threads, precision
        self.graph = OpenVinoGraph(path, inference_hint(precision), threads, static_shapes=True)
        self.input_names = list(self.graph.input_names)
        self.output_names = list(self.graph.output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.require_inputs(feeds)
        return dict(zip(self.output_names, self.graph.run(self.output_names, feeds)))

    def run_transient(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.require_inputs(feeds)
        return dict(zip(self.output_names, self.graph.run_transient(self.output_names, feeds)))
