"""Raw-stage data structures shared by every dataset reader and transform.

The raw stage is numpy only: an image is uint8 BGR [H, W, 3] (as cv2 reads it) and annotations
are float32 / bool arrays in that image's pixels. Conversion to the model's tensors happens in
maskface.data.dataset.to_tensor, after the transforms.

Coordinates are continuous pixel coordinates: pixel (i, j) covers [j, j+1) x [i, i+1), so an
image W pixels wide spans x in [0, W], a horizontal flip maps x to W - x, and a box is
(x1, y1, x2, y2) with x2 = x + w for a WIDER FACE `x y w h` annotation.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(RuntimeError):
    """A dataset cannot be used as given (missing folder, missing images in strict mode, ...)."""


class AnnotationFormatError(ValueError):
    """A malformed line in an annotation file; the message starts with `file:line:`."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


class ImageReadError(OSError):
    """An annotated image that cannot be decoded (missing, truncated or not an image)."""


class DataWarning(UserWarning):
    """Issued once per dataset with the summary of the problems found while reading it."""


@dataclass
class Sample:
    """One image with its faces, raw stage (what the transforms work on)."""

    image: np.ndarray  # uint8 [H, W, 3], BGR
    boxes: np.ndarray  # float32 [G, 4] x1, y1, x2, y2
    landmarks: np.ndarray  # float32 [G, K, 2]
    landmark_valid: np.ndarray  # bool [G, K]

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        g = self.boxes.shape[0]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        if self.landmarks.size == 0 and self.landmarks.ndim != 3:
            self.landmarks = self.landmarks.reshape(g, 0, 2)
        self.landmark_valid = np.asarray(self.landmark_valid, dtype=bool)
        if self.landmarks.ndim != 3 or self.landmarks.shape[0] != g or self.landmarks.shape[2] != 2:
            raise ValueError(f"landmarks must be [G={g}, K, 2], got {self.landmarks.shape}")
        if self.landmark_valid.shape != self.landmarks.shape[:2]:
            raise ValueError(
                f"landmark_valid must be {self.landmarks.shape[:2]}, got {self.landmark_valid.shape}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_landmarks(self) -> int:
        return int(self.landmarks.shape[1])

    def copy(self) -> "Sample":
        return Sample(self.image.copy(), self.boxes.copy(), self.landmarks.copy(), self.landmark_valid.copy())

    def select(self, keep: np.ndarray) -> "Sample":
        """The same image with only the faces in `keep` (bool mask or indices)."""
        return Sample(self.image, self.boxes[keep], self.landmarks[keep], self.landmark_valid[keep])


@dataclass
class FaceRecord:
    """The annotation of one image, as read from disk (no pixels)."""

    image_path: Path
    boxes: np.ndarray  # float32 [G, 4] x1 y1 x2 y2
    landmarks: np.ndarray  # float32 [G, K, 2]
    landmark_valid: np.ndarray  # bool [G, K]
    source: str  # "file:line" of the annotation, for error messages
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # per-face extras (WIDER flags)

    @property
    def num_faces(self) -> int:
        return int(self.boxes.shape[0])


def empty_landmarks(num_faces: int, num_landmarks: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros((num_faces, num_landmarks, 2), np.float32),
            np.zeros((num_faces, num_landmarks), bool))


def missing_point_mask(points: np.ndarray) -> np.ndarray:
    """True where a landmark is marked absent: both coordinates negative (the -1 convention)."""
    return (points[..., 0] < 0) & (points[..., 1] < 0)


@dataclass
class DataReport:
    """Problems found while reading one dataset: every dropped box or sample is listed here.

    `warnings` holds one line per problem ("file:line: what, what was done"); `counts` counts
    them by kind; `summary()` is the text shown to the user (also issued as a DataWarning).
    """

    name: str
    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    num_images: int = 0
    num_faces: int = 0

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        self.warnings.append(message)

    def __bool__(self) -> bool:  # truthy when something was reported
        return bool(self.warnings)

    def summary(self, max_lines: int = 10) -> str:
        head = f"{self.name}: {self.num_images} images, {self.num_faces} faces"
        if not self.warnings:
            return head + ", no problems found"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        lines = [f"{head}; {len(self.warnings)} problems ({kinds}):"]
        lines += [f"  {w}" for w in self.warnings[:max_lines]]
        if len(self.warnings) > max_lines:
            lines.append(f"  ... and {len(self.warnings) - max_lines} more (see the dataset's .report)")
        return "\n".join(lines)

    def emit(self, strict: bool = False) -> None:
        """Raise (strict) or warn once with the summary when problems were found."""
        if not self.warnings:
            return
        if strict:
            raise DatasetError(self.summary() + "\n(strict mode: fix the data or pass strict=False)")
        warnings.warn(self.summary(), DataWarning, stacklevel=3)
