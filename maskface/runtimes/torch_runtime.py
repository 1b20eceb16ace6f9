"""The PyTorch model as a pipeline runtime: MaskFace.detect_candidates / .landmarks on its device."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..modeling.maskface import MaskFace
from ..pipeline import select_candidates


class TorchRuntime:
    def __init__(self, model: MaskFace, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @property
    def num_landmarks(self) -> int:
        return self.model.num_landmarks

    @torch.no_grad()
    def detect(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return self.model.detect_candidates(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))

    def select(self, scores: torch.Tensor, boxes: torch.Tensor, inference) -> torch.Tensor:
        return select_candidates(scores, boxes, inference)

    @torch.no_grad()
    def keypoints(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points, scores, _ = self.model.landmarks(list(features), rois)
        return points, scores
