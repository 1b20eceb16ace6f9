"""Shared fixtures of the benchmark smoke tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory):
    """detector.onnx + keypoint_head_portable.onnx of the seeded tiny preset (what --onnx-dir takes)."""
    pytest.importorskip("onnxruntime")
    from export.export_onnx import export_detector, export_keypoint_head
    from maskface import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    graphs = tmp_path_factory.mktemp("tiny_onnx")
    export_detector(model, graphs / "detector.onnx")
    export_keypoint_head(model, graphs / "keypoint_head_portable.onnx", portable=True)
    return graphs
