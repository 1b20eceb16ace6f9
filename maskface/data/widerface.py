"""WIDER FACE readers: the official bbx_gt.txt and RetinaFace's 5-landmark label.txt.

Layouts under a root folder (`maskface train --data widerface:ROOT`):

    ROOT/wider_face_split/wider_face_{train,val}_bbx_gt.txt   official boxes
    ROOT/{train,val}/label.txt                                 RetinaFace boxes + 5 landmarks
    ROOT/WIDER_{train,val}/images/<event>/<name>.jpg           images (paths in both files are
                                                               relative to this folder; RetinaFace's
                                                               ROOT/{split}/images/ is used if absent)

bbx_gt.txt: an image path line, a face count line, then one line per face
`x y w h blur expression illumination invalid occlusion pose`. Official quirk: an image with 0
faces is followed by one line of ten zeros (skipped; tolerated when absent).

label.txt: `# path` starts an image; each following line is a face
`x y w h  lx0 ly0 f0  lx1 ly1 f1  lx2 ly2 f2  lx3 ly3 f3  lx4 ly4 f4  score` (20 numbers; 19
without the score; 4 for files with boxes only). Absent landmarks are -1 (all of a face's).
Point order: left eye, right eye, nose, left mouth corner, right mouth corner (image left).

Errors: a missing folder / file raises FileNotFoundError, a malformed line raises
AnnotationFormatError with file and line number. Faces with a non-positive width or height are
dropped and reported (DataReport, summarised in one DataWarning); so are images whose file is
missing (or an error with strict=True).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from maskface.data.dataset import FaceDataset, Transform
from maskface.data.files import check_images, require_dir, require_file
from maskface.data.structures import (
    AnnotationFormatError,
    DataReport,
    FaceRecord,
    empty_landmarks,
    missing_point_mask,
)

NUM_LANDMARKS = 5
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def _numbers(path: Path, lineno: int, line: str, what: str) -> list[float]:
    values = []
    for tok in line.split():
        try:
            v = float(tok)
        except ValueError:
            raise AnnotationFormatError(path, lineno, f"{what}: {tok!r} is not a number in {line.strip()!r}") from None
        if not math.isfinite(v):
            raise AnnotationFormatError(path, lineno, f"{what}: non-finite value {tok!r}")
        values.append(v)
    return values


def _is_number_line(line: str) -> bool:
    try:
        [float(t) for t in line.split()]
        return bool(line.split())
    except ValueError:
        return False


def _xywh_to_xyxy(values: np.ndarray) -> np.ndarray:
    boxes = values[:, :4].astype(np.float32).copy()
    boxes[:, 2] += boxes[:, 0]
    boxes[:, 3] += boxes[:, 1]
    return boxes


def _drop_degenerate(boxes_xywh: np.ndarray, sources: list[str], report: DataReport) -> np.ndarray:
    keep = (boxes_xywh[:, 2] > 0) & (boxes_xywh[:, 3] > 0)
    for i in np.flatnonzero(~keep):
        x, y, w, h = boxes_xywh[i, :4]
        report.add("degenerate box", f"{sources[i]}: box x={x:g} y={y:g} w={w:g} h={h:g} has no area, face dropped")
    return keep


def read_bbx_gt(path: str | Path, images_dir: str | Path, report: DataReport | None = None) -> list[FaceRecord]:
    """Parse an official wider_face_*_bbx_gt.txt into FaceRecords (no landmarks: all invalid)."""
    path = require_file(Path(path), "WIDER FACE annotation file")
    images_dir = Path(images_dir)
    report = report if report is not None else DataReport(str(path))
    lines = path.read_text().splitlines()
    records: list[FaceRecord] = []
    i = 0
    n = len(lines)
    while i < n:
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        name_line = i + 1
        if _is_number_line(name) or len(name.split()) != 1:
            raise AnnotationFormatError(
                path, name_line,
                f"expected an image path, got {name!r} (does the face count of the previous image match its lines?)")
        i += 1
        if i >= n:
            raise AnnotationFormatError(path, name_line, f"image {name!r} has no face count line (end of file)")
        count_text = lines[i].strip()
        try:
            count = int(count_text)
        except ValueError:
            raise AnnotationFormatError(path, i + 1, f"face count of {name!r} must be an integer, got {count_text!r}") from None
        if count < 0:
            raise AnnotationFormatError(path, i + 1, f"negative face count {count} for {name!r}")
        i += 1
        rows, sources = [], []
        if count == 0:
            # Official quirk: one line of zeros stands for "no face".
            if i < n and _is_number_line(lines[i]):
                vals = _numbers(path, i + 1, lines[i], "placeholder line of an image with 0 faces")
                if any(vals):
                    raise AnnotationFormatError(
                        path, i + 1, f"image {name!r} has 0 faces but is followed by a non-zero box line")
                i += 1
        for k in range(count):
            if i >= n:
                raise AnnotationFormatError(
                    path, i, f"image {name!r} announces {count} faces but the file ends after {k}")
            vals = _numbers(path, i + 1, lines[i], f"face {k + 1}/{count} of {name!r}")
            if len(vals) != 10:
                raise AnnotationFormatError(
                    path, i + 1,
                    f"face {k + 1}/{count} of {name!r}: expected 10 numbers "
                    f"(x y w h blur expression illumination invalid occlusion pose), got {len(vals)}")
            rows.append(vals)
            sources.append(f"{path}:{i + 1}")
            i += 1
        arr = np.asarray(rows, np.float64).reshape(-1, 10)
        keep = _drop_degenerate(arr, sources, report)
        arr = arr[keep]
        lm, valid = empty_landmarks(len(arr), NUM_LANDMARKS)
        attrs = {a: arr[:, 4 + j].astype(np.int64) for j, a in enumerate(ATTRIBUTE_NAMES)}
        records.append(FaceRecord(images_dir / name, _xywh_to_xyxy(arr), lm, valid, f"{path}:{name_line}", attrs))
    return records


def read_retinaface_labels(path: str | Path, images_dir: str | Path,
                           report: DataReport | None = None) -> list[FaceRecord]:
    """Parse RetinaFace's label.txt (boxes + 5 landmarks, -1 for absent) into FaceRecords."""
    path = require_file(Path(path), "RetinaFace label file")
    images_dir = Path(images_dir)
    report = report if report is not None else DataReport(str(path))
    records: list[FaceRecord] = []
    current: tuple[str, int] | None = None
    rows: list[list[float]] = []
    sources: list[str] = []

    def flush():
        if current is None:
            return
        name, line_no = current
        arr = np.asarray([r + [-1.0] * (20 - len(r)) for r in rows], np.float64).reshape(-1, 20)
        keep = _drop_degenerate(arr, sources, report)
        arr = arr[keep]
        pts = arr[:, 4:19].reshape(-1, NUM_LANDMARKS, 3)[:, :, :2].astype(np.float32)
        valid = ~missing_point_mask(pts)
        pts[~valid] = 0.0
        attrs = {"score": arr[:, 19].astype(np.float32)}
        records.append(FaceRecord(images_dir / name, _xywh_to_xyxy(arr), pts, valid, f"{path}:{line_no}", attrs))

    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            flush()
            name = line[1:].strip()
            if not name:
                raise AnnotationFormatError(path, lineno, "'#' line without an image path")
            current, rows, sources = (name, lineno), [], []
            continue
        if current is None:
            raise AnnotationFormatError(path, lineno, "face line before the first '# image/path' line")
        vals = _numbers(path, lineno, line, f"face of {current[0]!r}")
        if len(vals) not in (4, 19, 20):
            raise AnnotationFormatError(
                path, lineno,
                f"expected 4 (x y w h), 19 or 20 numbers (x y w h + 5 x (x, y, flag) [+ score]), got {len(vals)}")
        rows.append(vals)
        sources.append(f"{path}:{lineno}")
    flush()
    return records


def widerface_paths(root: str | Path, split: str) -> dict[str, Path]:
    root = Path(root)
    images = root / f"WIDER_{split}" / "images"
    if not images.is_dir() and (root / split / "images").is_dir():
        images = root / split / "images"
    return {
        "root": root,
        "bbx_gt": root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt",
        "retinaface": root / split / "label.txt",
        "images": images,
    }


class WiderFaceDataset(FaceDataset):
    """WIDER FACE with 5 landmarks where RetinaFace's label.txt provides them.

    annotations: "auto" (label.txt when present, else bbx_gt), "retinaface" or "bbx_gt".
    drop_invalid: drop faces the official file flags invalid (bbx_gt only; counted in the report).
    strict: raise DatasetError instead of warning when problems were found.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 annotations: str = "auto", annotation_file: str | Path | None = None,
                 drop_invalid: bool = False, strict: bool = False, **kwargs):
        paths = widerface_paths(root, split)
        require_dir(paths["root"], "WIDER FACE root")
        if annotation_file is not None:
            ann = Path(annotation_file)
            kind = "retinaface" if annotations == "retinaface" or ann.name == "label.txt" else "bbx_gt"
        elif annotations == "auto":
            kind = "retinaface" if paths["retinaface"].is_file() else "bbx_gt"
            ann = paths[kind]
            if not ann.is_file():
                raise FileNotFoundError(
                    f"no WIDER FACE {split} annotations under {paths['root']}: expected "
                    f"{paths['retinaface']} (RetinaFace, with landmarks) or {paths['bbx_gt']} (official)")
        elif annotations in ("retinaface", "bbx_gt"):
            kind, ann = annotations, paths[annotations]
        else:
            raise ValueError(f"annotations must be auto, retinaface or bbx_gt, got {annotations!r}")
        images_dir = require_dir(paths["images"], f"WIDER FACE {split} images")
        report = DataReport(f"WIDER FACE {split} ({ann})")
        reader = read_retinaface_labels if kind == "retinaface" else read_bbx_gt
        records = reader(ann, images_dir, report)
        if drop_invalid and kind == "bbx_gt":
            for rec in records:
                bad = rec.attributes["invalid"] != 0
                for j in np.flatnonzero(bad):
                    report.add("invalid face", f"{rec.source}: face {j + 1} flagged invalid, dropped (drop_invalid)")
                keep = ~bad
                rec.boxes, rec.landmarks, rec.landmark_valid = rec.boxes[keep], rec.landmarks[keep], rec.landmark_valid[keep]
                rec.attributes = {k: v[keep] for k, v in rec.attributes.items()}
        records = check_images(records, report)
        report.num_images = len(records)
        report.num_faces = sum(r.num_faces for r in records)
        report.emit(strict)
        self.annotation_kind = kind
        self.annotation_file = ann
        super().__init__(records, NUM_LANDMARKS, transform=transform, report=report, **kwargs)
