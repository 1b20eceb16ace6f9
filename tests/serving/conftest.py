"""Fixtures of the serving tests: small exported graphs, real photos, the in-process reference and
ONE real tritonserver (cpu target) for the whole session.

Speed: the graphs come from the mbv2 preset with narrow FPN / context / keypoint-head widths
(a seeded, untrained initialisation; the serving code does not care about the widths) and images
are resized to a longer side of 192, so a request costs ~0.1 s on 2 CPU cores.

An untrained model keeps no face at the default threshold (focal-loss prior ~0.01), so the served
repository uses a lowered threshold (0.012, just above the prior) with max_detections 5; ties are
broken by candidate index, and the in-process reference uses the same InferenceConfig.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `export` is a top-level folder of the repository
    sys.path.insert(0, str(REPO_ROOT))

from serving_testlib import (  # noqa: E402  (tests/serving/serving_testlib.py)
    MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES, MAX_SIDE, PHOTOS, assert_stopped_cleanly, low_inference, tiny_config,
)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    import torch

    from export.export_onnx import export_all
    from maskface.modeling.maskface import build_model

    out = tmp_path_factory.mktemp("serving_onnx")
    torch.manual_seed(0)
    export_all(build_model(config=tiny_config()).eval(), out)
    return out


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photos (scikit-image's test data) as encoded bytes: two JPEGs and a PNG."""
    import cv2
    import skimage.data

    out = {}
    for name, ext in PHOTOS.items():
        bgr = cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(ext, bgr)
        assert ok
        out[name] = buf.tobytes()
    return out


@pytest.fixture(scope="session")
def graphs(onnx_dir):
    from maskface.serving.onnx_graphs import OnnxGraphs

    return OnnxGraphs(onnx_dir / "detector.onnx", onnx_dir / "keypoint_head_portable.onnx")


def reference_results(graphs, photos, inference) -> dict[str, dict[str, np.ndarray]]:
    """OnnxPredictor in-process on the decoded bytes: what the server must answer."""
    from maskface.preprocess import decode_image
    from maskface.serving.onnx_graphs import OnnxPredictor

    predictor = OnnxPredictor(graphs, inference, max_side=MAX_SIDE)
    return {name: predictor(decode_image(data)) for name, data in photos.items()}


@pytest.fixture(scope="session")
def reference(graphs, photos):
    return reference_results(graphs, photos, low_inference())


@pytest.fixture(scope="session")
def cpu_repo(onnx_dir, tmp_path_factory) -> Path:
    from maskface.serving.repository import ServingParams, render_repository

    params = ServingParams.from_configs(low_inference(), max_side=MAX_SIDE, max_image_pixels=MAX_IMAGE_PIXELS,
                                        max_request_bytes=MAX_REQUEST_BYTES, preprocess_instances=1)
    return render_repository("cpu", tmp_path_factory.mktemp("repo") / "cpu", onnx_dir=onnx_dir, params=params)


@pytest.fixture(scope="session")
def server(cpu_repo):
    """tritonserver (bundled or system) with the cpu target on free loopback ports, for the session.

    Stopping it must leave no process of its group and no shared-memory segment."""
    from maskface.serving.server import ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no tritonserver: {exc}")
    srv = TritonServer(cpu_repo, ready_timeout=float(os.environ.get("MASKFACE_TRITON_READY_TIMEOUT", 180)))
    srv.start()
    try:
        yield srv
    finally:
        report = srv.stop()
        try:
            assert_stopped_cleanly(srv, report)
        finally:
            srv.cleanup()


@pytest.fixture(scope="session")
def gateway(server):
    """The HTTP gateway (maskface.serving.gateway) in front of the session's server."""
    from maskface.serving.gateway import Gateway

    with Gateway(server.http_url, max_request_bytes=MAX_REQUEST_BYTES, extra_ready=lambda: not server.dead_stubs()) as gw:
        yield gw
