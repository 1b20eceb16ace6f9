"""300W with 68 landmarks: the HRNet-Facial-Landmark-Detection CSV and the original .pts files.

CSV layout (HRNet):
    ROOT/face_landmarks_300w_{train,valid,valid_common,valid_challenge,test}.csv
    ROOT/images/<image_name>
  columns: image_name, scale, center_w, center_h, then 68 x (x, y). The face box is the square
  of side scale * 200 centred on (center_w, center_h) (HRNet's scale is the box size / 200).

.pts layout (the 300W distribution): every `<stem>.pts` has its image `<stem>.jpg|.png|...`
next to it; `pts_dir`, else ROOT/<split>/, else ROOT/images/<split>/ is searched recursively. A .pts file is
    version: 1
    n_points: 68
    {
    x y      (68 lines)
    }
  with no box: the face box is the square around the landmarks' extent (centre of their
  bounding box, side = its larger dimension), the same convention as the CSV's centre/scale.
  Coordinates are used as written (300W's .pts are 1-based, like the CSV derived from them).

Point order: 0-16 jaw, 17-21 left brow, 22-26 right brow, 27-35 nose, 36-41 left eye,
42-47 right eye, 48-67 mouth (image left).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from maskface.data.aflw import group_faces
from maskface.data.dataset import FaceDataset, Transform
from maskface.data.files import check_images, require_dir, require_file
from maskface.data.hrnet_csv import read_rows, square_box
from maskface.data.structures import AnnotationFormatError, DataReport, FaceRecord, missing_point_mask

NUM_LANDMARKS = 68
CSV_FIELDS = ("scale", "center_w", "center_h")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".PNG")


def read_300w_csv(path: str | Path, images_dir: str | Path, report: DataReport | None = None) -> list[FaceRecord]:
    path = Path(path)
    report = report if report is not None else DataReport(str(path))

    def box_of(info, pts, valid):
        return square_box(info["center_w"], info["center_h"], info["scale"] * 200.0)

    return group_faces(read_rows(path, CSV_FIELDS, NUM_LANDMARKS), Path(images_dir), path, report, box_of)


def read_pts(path: str | Path) -> np.ndarray:
    """Points [N, 2] of a .pts file; AnnotationFormatError with the line number when malformed."""
    path = require_file(Path(path), ".pts file")
    lines = path.read_text().splitlines()
    n_points = None
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("version"):
            continue
        if line.startswith("n_points"):
            _, _, value = line.partition(":")
            try:
                n_points = int(value)
            except ValueError:
                raise AnnotationFormatError(path, i, f"bad n_points line {line!r}") from None
            continue
        if line == "{":
            break
        raise AnnotationFormatError(path, i, f"unexpected line {line!r} before '{{'")
    else:
        raise AnnotationFormatError(path, len(lines), "no '{' opening the point list")
    if n_points is None:
        raise AnnotationFormatError(path, i, "missing 'n_points:' line")
    points = []
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line == "}":
            break
        parts = line.split()
        try:
            xy = [float(p) for p in parts]
        except ValueError:
            raise AnnotationFormatError(path, i, f"point line {line!r} is not two numbers") from None
        if len(xy) != 2 or not all(math.isfinite(v) for v in xy):
            raise AnnotationFormatError(path, i, f"point line {line!r} is not two finite numbers")
        points.append(xy)
    else:
        raise AnnotationFormatError(path, len(lines), "no '}' closing the point list")
    if len(points) != n_points:
        raise AnnotationFormatError(path, i, f"n_points is {n_points} but {len(points)} points are listed")
    return np.asarray(points, np.float32).reshape(-1, 2)


def box_from_landmarks(points: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    if not valid.any():
        return None
    p = points[valid]
    lo, hi = p.min(0), p.max(0)
    c = (lo + hi) / 2.0
    return square_box(float(c[0]), float(c[1]), float(max(hi - lo)))


def read_pts_folder(folder: str | Path, report: DataReport | None = None) -> list[FaceRecord]:
    folder = require_dir(Path(folder), "300W .pts")
    report = report if report is not None else DataReport(str(folder))
    records = []
    for pts_path in sorted(folder.rglob("*.pts")):
        pts = read_pts(pts_path)
        if len(pts) != NUM_LANDMARKS:
            raise AnnotationFormatError(pts_path, 1, f"expected {NUM_LANDMARKS} points, the file has {len(pts)}")
        valid = ~missing_point_mask(pts)
        pts[~valid] = 0.0
        image = next((pts_path.with_suffix(e) for e in IMAGE_EXTENSIONS if pts_path.with_suffix(e).is_file()), None)
        if image is None:
            report.add("missing image", f"{pts_path}:1: no image next to it ({'/'.join(IMAGE_EXTENSIONS)}), sample skipped")
            continue
        box = box_from_landmarks(pts, valid)
        if box is None or not (box[2] > box[0] and box[3] > box[1]):
            report.add("degenerate box", f"{pts_path}:1: landmarks span no area, sample skipped")
            continue
        records.append(FaceRecord(image, box[None], pts[None], valid[None], f"{pts_path}:1"))
    if not records and not report:
        raise FileNotFoundError(f"no .pts files under {folder}")
    return records


class W300Dataset(FaceDataset):
    """300W. source: "auto" (the CSV when present, else .pts files), "csv" or "pts"."""

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 source: str = "auto", csv_file: str | Path | None = None, pts_dir: str | Path | None = None,
                 strict: bool = False, **kwargs):
        root = require_dir(Path(root), "300W root")
        csv_path = Path(csv_file) if csv_file is not None else root / f"face_landmarks_300w_{split}.csv"
        pts_path = Path(pts_dir) if pts_dir is not None else root / split
        if pts_dir is None and not pts_path.is_dir() and (root / "images" / split).is_dir():
            pts_path = root / "images" / split
        if source == "auto":
            if csv_file is not None or csv_path.is_file():
                source = "csv"
            elif pts_dir is not None or pts_path.is_dir():
                source = "pts"
            else:
                raise FileNotFoundError(
                    f"no 300W {split} annotations under {root}: expected {csv_path} (HRNet CSV) "
                    f"or a folder {pts_path} of .pts files")
        if source == "csv":
            report = DataReport(f"300W {split} ({csv_path})")
            records = read_300w_csv(csv_path, require_dir(root / "images", "300W images"), report)
        elif source == "pts":
            report = DataReport(f"300W {split} ({pts_path})")
            records = read_pts_folder(pts_path, report)
        else:
            raise ValueError(f"source must be auto, csv or pts, got {source!r}")
        records = check_images(records, report)
        report.num_images = len(records)
        report.num_faces = sum(r.num_faces for r in records)
        report.emit(strict)
        self.source = source
        super().__init__(records, NUM_LANDMARKS, transform=transform, report=report, **kwargs)
