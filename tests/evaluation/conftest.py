"""Shared fixtures for the evaluation tests: the published WIDER FACE val ground truth.

Located at $MASKFACE_WIDER_GT, else ../shared/data/widerface_val_gt beside the repository (CI
clones the repository next to shared/). Tests that need it are skipped, with the reason, when
the files are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GT_FILES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")


def wider_gt_dir() -> Path:
    env = os.environ.get("MASKFACE_WIDER_GT")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data" / "widerface_val_gt").resolve()


@pytest.fixture(scope="session")
def wider_gt_path() -> Path:
    path = wider_gt_dir()
    missing = [f for f in GT_FILES if not (path / f).is_file()]
    if missing:
        pytest.skip(f"WIDER FACE val ground truth not found: {path} lacks {', '.join(missing)} "
                    f"(set MASKFACE_WIDER_GT to the folder with the published .mat files)")
    return path


@pytest.fixture(scope="session")
def wider_gt(wider_gt_path):
    from maskface.evaluation.widerface import load_widerface_gt

    return load_widerface_gt(wider_gt_path)
