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
