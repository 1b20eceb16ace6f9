"""The cpu target's bf16 precision: the checkpoint's detector or keypoint head in PyTorch BF16.

ONNX Runtime has no BF16 convolutions, so for `precision: bf16` the maskface_detector and
maskface_keypoints stages load the checkpoint itself (weights_only, maskface.checkpoint) and run
maskface.runtimes.bf16_runtime.Bf16Runtime: the same tensors in and out as the ONNX graphs
(float32 at the stage boundary), so the ensemble and the other stages do not change.
Imported only by a bf16 stage (torch start-up is paid there alone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..contracts import DETECTOR_OUTPUTS, FEATURE_NAMES, KEYPOINT_INPUTS, KEYPOINT_OUTPUTS
from .stages import BatchedRuns, RequestError

PARTS = ("detector", "keypoints")


def check_bf16_serving() -> None:
    """Refuse bf16 on a CPU without native BF16 (detected, never assumed), saying what to use instead."""
    from ..runtimes.bf16_runtime import Bf16UnsupportedError, require_cpu_bf16

    try:
        require_cpu_bf16()
    except Bf16UnsupportedError as exc:  # a configuration error to `maskface serve`: one line, exit 2
        raise ValueError(f"precision bf16: {exc}") from None


def checkpoint_facts(path: str | Path) -> dict[str, int]:
    """num_landmarks / feature_channels / pre_nms_topk of a checkpoint (what the graphs would declare)."""
    from ..checkpoint import read_checkpoint
    from ..config import MaskFaceConfig

    cfg = MaskFaceConfig.from_dict(read_checkpoint(path)["config"])
    return {"num_landmarks": int(cfg.keypoints.num_landmarks), "feature_channels": int(cfg.fpn.channels),
            "pre_nms_topk": int(cfg.inference.pre_nms_topk)}


class TorchBf16Model(BatchedRuns):
    """One half of the model (detector or keypoint head) of a checkpoint, run in BF16 by PyTorch."""

    def __init__(self, path: str | Path, part: str, threads: int | None = None):
        import torch

        from ..checkpoint import load_model
        from ..runtimes.bf16_runtime import Bf16Runtime

        if part not in PARTS:
            raise ValueError(f"part {part!r} must be one of {PARTS}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        check_bf16_serving()
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = threads
        self.part = part
        self.runtime = Bf16Runtime(load_model(path))
        self.input_names = ["images"] if part == "detector" else list(KEYPOINT_INPUTS)
        self.output_names = list(DETECTOR_OUTPUTS) if part == "detector" else list(KEYPOINT_OUTPUTS)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from ..pipeline import as_numpy

        missing = set(self.input_names) - set(feeds)
        if missing:
            raise RequestError(f"missing inputs {sorted(missing)}")
        if self.part == "detector":
            scores, boxes, features = self.runtime.detect(np.ascontiguousarray(feeds["images"], np.float32))
            outputs = (scores, boxes, *features)
        else:
            features = [torch.from_numpy(np.ascontiguousarray(feeds[n], np.float32)) for n in FEATURE_NAMES]
            rois = torch.from_numpy(np.ascontiguousarray(feeds["rois"], np.float32).reshape(-1, 5))
            outputs = self.runtime.keypoints(features, rois)
        # float() first: numpy has no bfloat16
        return {name: np.ascontiguousarray(as_numpy(v if isinstance(v, np.ndarray) else v.float()), np.float32)
                for name, v in zip(self.output_names, outputs)}
