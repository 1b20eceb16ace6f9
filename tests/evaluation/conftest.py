"""Shared fixtures for the evaluation tests: the published WIDER FACE val ground truth.

Located at $MASKFACE_WIDER_GT (.ci/run points it at ../shared/data/widerface_val_gt, the copy CI keeps
beside the clone). These are the only tests that skip, with the reason, on a
clone that has no published ground truth.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

GT_FILES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")


def wider_gt_dir() -> Path | None:
    env = os.environ.get("MASKFACE_WIDER_GT")
    return Path(env) if env else None


@pytest.fixture(scope="session")
def wider_gt_path() -> Path:
    path = wider_gt_dir()
    if path is None:
        pytest.skip("needs the published WIDER FACE val ground truth: set MASKFACE_WIDER_GT to the folder with "
                    "wider_face_val.mat and wider_{easy,medium,hard}_val.mat (.ci/run does: "
                    "../shared/data/widerface_val_gt)")
    missing = [f for f in GT_FILES if not (path / f).is_file()]
    if missing:
        pytest.skip(f"WIDER FACE val ground truth not found: {path} lacks {', '.join(missing)} "
                    f"(set MASKFACE_WIDER_GT to the folder with the published .mat files)")
    return path


@pytest.fixture(scope="session")
def wider_gt(wider_gt_path):
    from maskface.evaluation.widerface import load_widerface_gt

    return load_widerface_gt(wider_gt_path)
