"""Fixtures shared across the test folders."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_graphs(tmp_path_factory):
    """(model, folder): the seeded tiny preset and its detector.onnx + keypoint_head_portable.onnx, what
    --onnx-dir and the ONNX Runtime / OpenVINO runtimes take. Tests read both and change neither."""
    from export.export_onnx import export_detector, export_keypoint_head
    from maskface import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    folder = tmp_path_factory.mktemp("tiny_graphs")
    export_detector(model, folder / "detector.onnx")
    export_keypoint_head(model, folder / "keypoint_head_portable.onnx", portable=True)
    return model, folder
