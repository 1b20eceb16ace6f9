"""AFW and PASCAL faces in the layout of the face-eval toolbox (Mathias et al., "Face detection
without bells and whistles", ECCV 2014), which the paper's Table 2 protocol uses.

Ground truth: a MATLAB file whose variable ``Annotations`` is a struct array, one entry per image:

    Annotations(i).imgname   'name.jpg'                     (char)
    Annotations(i).objects   [F x 4] or [F x 6] double       one face per row: x1 y1 x2 y2 [c5 ignore]

as in ``new_annotations_AFW.mat`` (AFW, 6 columns) and ``Annotations_Face_PASCALLayout_large_fixed.mat``
(PASCAL faces, 4 or 6 columns). Column 6, when present, flags a face to ignore (VOC "difficult");
column 5 is not used. Faces narrower or lower than ``min_size`` (the toolbox's 30 x 30) are also
ignored. Images are joined on the file stem (``name`` for ``name.jpg``).

Detections: a text file, one detection per line, ``image_id score x1 y1 x2 y2`` (the toolbox's
detection list; ``image_id`` is the image stem, a trailing extension is dropped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskface.data.structures import AnnotationFormatError

MIN_FACE_SIZE = (30.0, 30.0)  # (width, height) below which a face is ignored


@dataclass
class FaceEvalImage:
    name: str  # file name as annotated, e.g. "1004109301.jpg"
    boxes: np.ndarray  # [F, 4] x1 y1 x2 y2
    ignore: np.ndarray  # [F] bool

    @property
    def stem(self) -> str:
        return image_stem(self.name)


def image_stem(name: str) -> str:
    stem = Path(str(name).strip()).name
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _as_objects(value, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise ValueError(f"{where}: objects must be [F, 4] or [F, 6] (x1 y1 x2 y2 ...), got shape {arr.shape}")
    if not np.isfinite(arr[:, :4]).all():
        raise ValueError(f"{where}: non-finite box coordinates")
    return arr


def read_face_eval_mat(path: str | Path, min_size: tuple[float, float] = MIN_FACE_SIZE) -> list[FaceEvalImage]:
    """The ``Annotations`` struct of a face-eval toolbox .mat file (AFW or PASCAL faces)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"{path}: not a MATLAB v5 .mat file ({exc}); save it with -v7 or older") from None
    if "Annotations" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no 'Annotations' struct (variables: {keys}); expected the face-eval toolbox "
                         "layout Annotations(i).imgname / .objects")
    images = []
    for i, entry in enumerate(np.atleast_1d(mat["Annotations"])):
        where = f"{path}: Annotations({i + 1})"
        if not hasattr(entry, "imgname") or not hasattr(entry, "objects"):
            raise ValueError(f"{where}: needs the fields imgname and objects")
        objects = _as_objects(entry.objects, where)
        boxes = objects[:, :4]
        ignore = objects[:, 5] != 0 if objects.shape[1] >= 6 else np.zeros(len(objects), bool)
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise ValueError(f"{where}: a box has x2 < x1 or y2 < y1 (columns are x1 y1 x2 y2)")
        small = ((boxes[:, 2] - boxes[:, 0]) < min_size[0]) | ((boxes[:, 3] - boxes[:, 1]) < min_size[1])
        images.append(FaceEvalImage(str(entry.imgname), boxes, ignore | small))
    return images


def read_detection_list(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``image_id score x1 y1 x2 y2`` lines -> {stem: (boxes [D, 4], scores [D])}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detection file not found: {path}")
    rows: dict[str, list[list[float]]] = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise AnnotationFormatError(path, lineno, f"expected 'image_id score x1 y1 x2 y2', got {line.strip()!r}")
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError:
                raise AnnotationFormatError(path, lineno, f"score and box must be numbers: {line.strip()!r}") from None
            if not all(math.isfinite(v) for v in values):
                raise AnnotationFormatError(path, lineno, f"non-finite value in {line.strip()!r}")
            rows.setdefault(image_stem(parts[0]), []).append(values)
    return {k: (np.asarray(v)[:, 1:].reshape(-1, 4), np.asarray(v)[:, 0]) for k, v in rows.items()}


def format_detections(image_id: str, boxes, scores) -> str:
    """Lines of the detection list for one image (boxes xyxy in original pixels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64).ravel()
    return "".join(f"{image_stem(image_id)} {sc:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n"
                   for sc, (x1, y1, x2, y2) in zip(s, b))
