"""Checks on the files a dataset reader is given (no torch / cv2: the CSV readers use them too)."""
from __future__ import annotations

import os
from pathlib import Path

from maskface.data.structures import DataReport, FaceRecord


def check_images(records: list[FaceRecord], report: DataReport) -> list[FaceRecord]:
    """Drop (and report) records whose image file does not exist."""
    kept = []
    for rec in records:
        if os.path.isfile(rec.image_path):
            kept.append(rec)
        else:
            report.add("missing image", f"{rec.source}: image {rec.image_path} not found, sample skipped")
    return kept


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
