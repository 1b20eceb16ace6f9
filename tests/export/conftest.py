import pytest
import torch

from maskface import build_model


@pytest.fixture(scope="session")
def export_model():
    """The small preset, seeded: what the export tests export and compare against."""
    torch.manual_seed(0)
    return build_model("mbv2").eval()


@pytest.fixture(scope="session")
def built(tmp_path_factory, export_model):
    """Run the main job once on this CPU machine: export + ONNX Runtime parity (+ TensorRT status)."""
    from export.build_engines import main

    out = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)  # build_engines seeds the same initialisation as export_model
    code = main(["--config", "mbv2", "--out", str(out)])
    return out, code


@pytest.fixture(scope="session")
def detector_k5000(tmp_path_factory, export_model):
    """detector.onnx as exported before issue 11: an in-graph TopK with K = 5000 (beyond TensorRT's 3840)."""
    import copy

    from export.export_onnx import export_detector

    model = copy.deepcopy(export_model)
    model.cfg.inference.pre_nms_topk = 5000
    return export_detector(model, tmp_path_factory.mktemp("k5000") / "detector.onnx")
