"""Single-image inference in original-image pixels with the PyTorch model: the pipeline
(maskface.pipeline.Pipeline) on a TorchRuntime."""
from __future__ import annotations

import torch

from ..config import InferenceConfig
from ..modeling.maskface import MaskFace
from ..pipeline import Pipeline
from ..runtimes.torch_runtime import TorchRuntime


class ModelPipeline(Pipeline):
    """A pipeline on a runtime of `self.model`, whose thresholds are read from model.cfg.inference at
    each call (engine.tta switches NMS off there for its raw passes)."""

    model: MaskFace

    @property
    def inference(self) -> InferenceConfig:
        return self.model.cfg.inference

    @property
    def num_landmarks(self) -> int:
        return self.model.num_landmarks


class Predictor(ModelPipeline):
    """Pipeline over the model's own stages in PyTorch. See Pipeline for the arguments."""

    def __init__(self, model: MaskFace, device: str | torch.device = "cpu", max_side: int | None = 640,
                 min_side: int | None = None):
        runtime = TorchRuntime(model, device)
        super().__init__(runtime, model.cfg.inference, model.cfg.input, max_side, min_side)
        self.model = runtime.model
        self.device = runtime.device
