"""The one-line API: ``maskface.load()`` and results that draw and serialise themselves.

    import maskface
    detector = maskface.load()                       # the demo model (or load("run/best.pth"))
    faces = detector("photo.jpg")                    # a path, a BGR uint8 array, or a list of either
    faces.save("photo_faces.jpg"); print(faces.to_json())

torch and OpenCV are imported when a model is loaded or an image drawn, not when this module is.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np

ImageInput = Union[str, os.PathLike, np.ndarray]

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is visible, else 'cpu'; anything else is checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible to torch (use --device cpu or auto)")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}") from exc
    return device


def _round_list(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, np.float64), digits).tolist()


@dataclass
class Detections:
    """The faces found in one image, in original-image pixels.

    boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks [N, K, 2], landmark_scores [N, K];
    ``image`` is the BGR input (kept so that :meth:`draw` needs nothing else), ``name`` its file
    stem when it came from a path.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    landmark_scores: np.ndarray
    image: np.ndarray | None = None
    name: str | None = None

    def __len__(self) -> int:
        return int(len(self.scores))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_dict()["faces"])

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "scores": self.scores, "landmarks": self.landmarks,
                "landmark_scores": self.landmark_scores}

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``maskface detect --json`` (docs/CONTRACTS.md); coordinates rounded
        to 0.01 px, scores to 1e-5."""
        out: dict[str, Any] = {"image": self.name}
        if self.image is not None:
            out["height"], out["width"] = int(self.image.shape[0]), int(self.image.shape[1])
        out["faces"] = [
            {"box": _round_list(self.boxes[i], 2), "score": round(float(self.scores[i]), 5),
             "landmarks": _round_list(self.landmarks[i], 2),
             "landmark_scores": _round_list(self.landmark_scores[i], 5)}
            for i in range(len(self))
        ]
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def draw(self, image: np.ndarray | None = None) -> np.ndarray:
        """A copy of the image (the input unless another is given) with boxes, scores and landmarks."""
        from .visualize import draw_detections

        canvas = image if image is not None else self.image
        if canvas is None:
            raise ValueError("these detections carry no image: pass one, e.g. draw(cv2.imread(path))")
        return draw_detections(canvas, self.as_arrays())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the drawing (.jpg / .png) or the JSON (.json), atomically; returns the path."""
        from .io_utils import atomic_write_bytes, atomic_write_image

        path = Path(path)
        if path.suffix.lower() == ".json":
            atomic_write_bytes(path, (self.to_json(indent=2) + "\n").encode())
        elif path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
            atomic_write_image(path, self.draw())
        else:
            raise ValueError(f"{path}: save writes .jpg, .png, .bmp (the drawing) or .json (the numbers)")
        return path


def _as_image(item: ImageInput) -> tuple[np.ndarray, str | None]:
    if isinstance(item, (str, os.PathLike)):
        from .io_utils import read_image

        return read_image(item), Path(item).stem
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"an image array must be BGR uint8 [H, W, 3] (as cv2.imread returns), got "
                             f"{item.dtype} {list(item.shape)}")
        if item.shape[0] < 1 or item.shape[1] < 1:
            raise ValueError(f"empty image array {list(item.shape)}")
        return item, None
    raise TypeError(f"expected an image path, a BGR uint8 array or a list of them, got {type(item).__name__}")


class FaceDetector:
    """A loaded model that takes a path, a BGR uint8 array, or a list / tuple of them, and returns
    :class:`Detections` (a list of them for a list)."""

    def __init__(self, predictor):
        self.predictor = predictor  # maskface.engine.predictor.Predictor

    @property
    def model(self):
        return self.predictor.model

    @property
    def device(self):
        return self.predictor.device

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Detections | list[Detections]:
        if isinstance(images, (list, tuple)):
            return [self._one(item) for item in images]
        return self._one(images)

    predict = __call__

    def _one(self, item: ImageInput) -> Detections:
        image, name = _as_image(item)
        result = self.predictor(image)
        return Detections(result["boxes"], result["scores"], result["landmarks"], result["landmark_scores"],
                          image=image, name=name)


def load(checkpoint: str | os.PathLike | None = None, device: str = "auto", max_side: int | None = 640,
         score_threshold: float | None = None) -> FaceDetector:
    """A ready detector. ``checkpoint``: a MaskFace ``.pth`` (None: the shipped demo model, see
    maskface/demo/weights.py); ``device``: auto | cpu | cuda[:N]; ``max_side``: images are resized
    so that their longer side is at most this (None: original size); ``score_threshold``: overrides
    the checkpoint's (0.5 by default)."""
    from .checkpoint import load_model
    from .engine.predictor import Predictor

    if checkpoint is None:
        from .demo.weights import demo_checkpoint

        checkpoint = demo_checkpoint()  # FileNotFoundError with what to do when it is not installed
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    dev = resolve_device(device)
    model = load_model(checkpoint, map_location=dev)
    if score_threshold is not None:
        model.cfg.inference.score_threshold = float(score_threshold)
    return FaceDetector(Predictor(model, device=dev, max_side=max_side))


__all__ = ["Detections", "FaceDetector", "load", "resolve_device"]
