"""The shipped demo model on a real photo from the allowed sources (matplotlib's Grace Hopper):
PyTorch in-process, ONNX Runtime in-process and the real tritonserver ensemble (cpu target) find
the same faces (N > 0), with boxes and landmarks within 1 px of each other."""
from pathlib import Path

import numpy as np
import pytest

PIXEL_TOL = 1.0
MAX_SIDE = 640


def grace_hopper_bytes() -> bytes:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()


@pytest.fixture(scope="module")
def demo_model():
    from maskface.checkpoint import load_model
    from maskface.demo.weights import demo_checkpoint

    return load_model(demo_checkpoint())


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory, demo_model):
    from export.export_onnx import export_all

    return export_all(demo_model, tmp_path_factory.mktemp("demo_onnx"))


def _pair_up(a: dict, b: dict) -> tuple[float, float]:
    """Largest box / landmark distance (px) after pairing each face of `a` with the nearest of `b`."""
    assert len(a["boxes"]) == len(b["boxes"]), (len(a["boxes"]), len(b["boxes"]))
    worst_box = worst_lm = 0.0
    for box, lm in zip(a["boxes"], a["landmarks"]):
        j = int(np.abs(b["boxes"] - box).max(axis=1).argmin())
        worst_box = max(worst_box, float(np.abs(b["boxes"][j] - box).max()))
        worst_lm = max(worst_lm, float(np.abs(b["landmarks"][j] - lm).max()))
    return worst_box, worst_lm


def test_pytorch_onnxruntime_and_triton_find_the_same_faces(demo_model, demo_onnx, tmp_path):
    pytest.importorskip("tritonclient.http")
    from maskface.engine.predictor import Predictor
    from maskface.preprocess import decode_image
    from maskface.serving.client import MaskFaceClient
    from maskface.serving.onnx_graphs import OnnxGraphs, OnnxPredictor
    from maskface.serving.repository import ServingParams, render_repository
    from maskface.serving.server import ServerError, TritonServer, find_tritonserver

    data = grace_hopper_bytes()
    image = decode_image(data)
    in_torch = Predictor(demo_model, max_side=MAX_SIDE)(image)
    graphs = OnnxGraphs(demo_onnx["detector"], demo_onnx["keypoint_head_portable"])
    in_ort = OnnxPredictor(graphs, demo_model.cfg.inference, max_side=MAX_SIDE)(image)

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no tritonserver: {exc}")
    params = ServingParams.from_configs(demo_model.cfg.inference, demo_model.cfg.input, max_side=MAX_SIDE,
                                        preprocess_instances=1)
    repo = render_repository("cpu", tmp_path / "repo", onnx_dir=Path(demo_onnx["detector"]).parent, params=params)
    server = TritonServer(repo, ready_timeout=180)
    server.start()
    try:
        with MaskFaceClient(server.http_url, "http", timeout=120) as client:
            served = client.detect(data)
    finally:
        server.stop()
        server.cleanup()

    assert len(in_torch["scores"]) > 0, "the demo model finds no face in Grace Hopper's photo"
    for name, other in (("onnxruntime", in_ort), ("triton", served)):
        box, lm = _pair_up(in_torch, other)
        print(f"\n{name} vs PyTorch: {len(other['boxes'])} faces, boxes {box:.2e} px, landmarks {lm:.2e} px apart")
        assert box <= PIXEL_TOL and lm <= PIXEL_TOL, f"{name}: boxes {box:.3f} px, landmarks {lm:.3f} px apart"
