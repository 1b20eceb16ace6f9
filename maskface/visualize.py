"""Drawing detections on images."""
from __future__ import annotations

import cv2
import numpy as np

# Distinct BGR colours for landmarks 0..4 (eyes, nose, mouth corners); larger sets cycle.
_POINT_COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255)]


def draw_detections(image_bgr: np.ndarray, result: dict[str, np.ndarray]) -> np.ndarray:
    canvas = image_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for i, (box, score) in enumerate(zip(result["boxes"], result["scores"])):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 200, 0), thickness)
        cv2.putText(canvas, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, (0, 200, 0), thickness)
        for j, (x, y) in enumerate(result["landmarks"][i]):
            cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1,
                       _POINT_COLOURS[j % len(_POINT_COLOURS)], -1)
    return canvas
