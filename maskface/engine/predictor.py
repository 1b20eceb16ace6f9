"""Single-image inference in original-image pixels."""
from __future__ import annotations

import numpy as np
import torch

from ..modeling.maskface import MaskFace
from ..postprocess import to_numpy_detections
from ..preprocess import prepare_image


class Predictor:
    """BGR uint8 image of any size -> dict of numpy arrays in original pixels:
    boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks [N, K, 2], landmark_scores [N, K].

    `max_side` resizes so the longer side is at most that many pixels (None keeps the original
    scale); `min_side` resizes so the shorter side is exactly that many pixels (the §4.2 landmark
    protocol: 640), capped by `max_side` when both are given; `scale` forces a scale factor (used
    by the test-time image pyramid). `with_landmarks=False` skips the keypoint head.
    """

    def __init__(self, model: MaskFace, device: str | torch.device = "cpu", max_side: int | None = 640,
                 min_side: int | None = None):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_side = max_side
        self.min_side = min_side

    @property
    def num_landmarks(self) -> int:
        return self.model.num_landmarks

    def __call__(self, image_bgr: np.ndarray, scale: float | None = None,
                 with_landmarks: bool = True) -> dict[str, np.ndarray]:
        prepared = prepare_image(image_bgr, self.model.cfg.input, self.max_side, scale, self.min_side)
        images = torch.from_numpy(prepared.image).unsqueeze(0).to(self.device)
        with torch.no_grad():
            result = to_numpy_detections(**self.model.inference(images, with_landmarks=with_landmarks)[0])
        result["boxes"] = prepared.boxes_to_original(result["boxes"])
        result["landmarks"] = prepared.to_original(result["landmarks"])
        return result
