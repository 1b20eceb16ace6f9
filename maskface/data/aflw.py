"""AFLW with 19 landmarks, in the layout of HRNet-Facial-Landmark-Detection.

    ROOT/face_landmarks_aflw_{train,test}.csv   (also test_frontal)
    ROOT/images/<image_name>                    paths in the CSV are relative to this folder

CSV columns: image_name, scale, box_size, center_w, center_h, then 19 x (x, y). `box_size` is
the side of the face box, used to normalise the NME; the face box is the square of that side
centred on (center_w, center_h). `scale` (box size / 200 in HRNet) is kept as an attribute.
Several rows of the same image become one sample with several faces.

Point order (see maskface.data.landmark_sets): 0-2 left brow, 3-5 right brow, 6-8 left eye,
9-11 right eye, 12-14 nose, 15-17 mouth, 18 chin.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskface.data.dataset import FaceDataset, Transform
from maskface.data.files import check_images, require_dir
from maskface.data.hrnet_csv import read_rows, square_box
from maskface.data.structures import DataReport, FaceRecord

NUM_LANDMARKS = 19
CSV_FIELDS = ("scale", "box_size", "center_w", "center_h")


def group_faces(rows, images_dir: Path, path: Path, report: DataReport, box_of) -> list[FaceRecord]:
    """Rows (lineno, name, info, pts, valid) -> one FaceRecord per image, faces in file order."""
    by_name: dict[str, dict] = {}
    for lineno, name, info, pts, valid in rows:
        box = box_of(info, pts, valid)
        if box is None or not (box[2] > box[0] and box[3] > box[1]):
            report.add("degenerate box", f"{path}:{lineno}: face of {name} has no box area ({info}), face dropped")
            continue
        entry = by_name.setdefault(name, {"line": lineno, "boxes": [], "pts": [], "valid": [], "info": []})
        entry["boxes"].append(box)
        entry["pts"].append(pts)
        entry["valid"].append(valid)
        entry["info"].append(info)
    records = []
    for name, e in by_name.items():
        attrs = {k: np.asarray([i[k] for i in e["info"]], np.float32) for k in e["info"][0]}
        records.append(FaceRecord(images_dir / name, np.stack(e["boxes"]).astype(np.float32),
                                  np.stack(e["pts"]).astype(np.float32), np.stack(e["valid"]),
                                  f"{path}:{e['line']}", attrs))
    return records


def read_aflw_csv(path: str | Path, images_dir: str | Path, report: DataReport | None = None) -> list[FaceRecord]:
    path = Path(path)
    report = report if report is not None else DataReport(str(path))

    def box_of(info, pts, valid):
        return square_box(info["center_w"], info["center_h"], info["box_size"])

    return group_faces(read_rows(path, CSV_FIELDS, NUM_LANDMARKS), Path(images_dir), path, report, box_of)


class AFLWDataset(FaceDataset):
    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None,
                 csv_file: str | Path | None = None, strict: bool = False, **kwargs):
        root = require_dir(Path(root), "AFLW root")
        ann = Path(csv_file) if csv_file is not None else root / f"face_landmarks_aflw_{split}.csv"
        images_dir = require_dir(root / "images", "AFLW images")
        report = DataReport(f"AFLW {split} ({ann})")
        records = check_images(read_aflw_csv(ann, images_dir, report), report)
        report.num_images = len(records)
        report.num_faces = sum(r.num_faces for r in records)
        report.emit(strict)
        super().__init__(records, NUM_LANDMARKS, transform=transform, report=report, **kwargs)
