"""The CSV annotation layout of HRNet-Facial-Landmark-Detection (AFLW, 300W), one face per row.

A header row (`image_name,scale,...`) is optional; each data row is the image path (relative to
the images folder), a fixed number of numeric fields, then K x (x, y) landmark coordinates.
Points with both coordinates negative are absent (-1 convention).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from maskface.data.files import require_file
from maskface.data.structures import AnnotationFormatError, missing_point_mask


def read_rows(path: str | Path, fields: tuple[str, ...], num_landmarks: int):
    """Yield (line number, image name, {field: value}, points [K, 2], valid [K]) per data row."""
    path = require_file(Path(path), "landmark CSV file")
    expected = 1 + len(fields) + 2 * num_landmarks
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and row[0].strip() == "image_name":
                if len(row) != expected:
                    raise AnnotationFormatError(
                        path, lineno, f"header has {len(row)} columns, expected {expected} "
                        f"(image_name, {', '.join(fields)}, {num_landmarks} x (x, y))")
                continue
            if len(row) != expected:
                raise AnnotationFormatError(
                    path, lineno, f"expected {expected} columns (image_name, {', '.join(fields)}, "
                    f"{num_landmarks} x (x, y)), got {len(row)}")
            name = row[0].strip()
            if not name:
                raise AnnotationFormatError(path, lineno, "empty image name")
            values = []
            for col, tok in enumerate(row[1:], start=2):
                try:
                    v = float(tok)
                except ValueError:
                    raise AnnotationFormatError(path, lineno, f"column {col}: {tok!r} is not a number") from None
                if not math.isfinite(v):
                    raise AnnotationFormatError(path, lineno, f"column {col}: non-finite value {tok!r}")
                values.append(v)
            info = dict(zip(fields, values[: len(fields)]))
            pts = np.asarray(values[len(fields):], np.float32).reshape(num_landmarks, 2)
            valid = ~missing_point_mask(pts)
            pts[~valid] = 0.0
            yield lineno, name, info, pts, valid


def square_box(cx: float, cy: float, side: float) -> np.ndarray:
    h = side / 2.0
    return np.asarray([cx - h, cy - h, cx + h, cy + h], np.float32)
