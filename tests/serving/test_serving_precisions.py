"""The cpu target at INT8 and BF16, served for real: one parameter (`precision`) changes the graphs,
nothing else. Each server must give the in-process pipeline of the same precision's answers and
keep the serving contract (a refused request leaves it serving).

INT8: the tiny serving model's detector quantised by export/quantize_int8.py's own steps, calibrated
on seeded noise images (the test needs no demo data); the keypoint head stays FP32, as by default.
BF16: the same seeded model's FP32 graphs. Both detectors run in OpenVINO, the keypoint heads in ONNX
Runtime (maskface.runtimes.openvino_runtime), in the stages and in the in-process reference.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from serving_testlib import (
    MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES, MAX_SIDE, assert_stopped_cleanly, low_inference, tiny_config,
)


def _start(repo: Path):
    from maskface.serving.server import ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no tritonserver: {exc}")
    server = TritonServer(repo, ready_timeout=240)
    server.start()
    return server


def _params():
    from maskface.serving.repository import ServingParams

    # One intra-op thread in the stages, as in the in-process reference below: the untrained model's
    # heatmaps have near-tied peaks, which another reduction order may resolve to another pixel.
    return ServingParams.from_configs(low_inference(), max_side=MAX_SIDE, max_image_pixels=MAX_IMAGE_PIXELS,
                                      max_request_bytes=MAX_REQUEST_BYTES, preprocess_instances=1, cpu_threads=1)


def _check_served(server, photos, predictor, fp32) -> None:
    """Same faces as the in-process pipeline of this precision (boxes and landmarks within 1 px, scores
    within 1e-5), further from FP32 than from it (so the server did not just run FP32), and a refused
    request changes nothing."""
    from maskface.preprocess import decode_image
    from maskface.serving.client import MaskFaceClient, ServingError

    with MaskFaceClient(server.http_url) as client:
        found, to_precision, to_fp32 = 0, 0.0, 0.0
        for name, data in photos.items():
            image = decode_image(data)
            want, plain = predictor(image), fp32(image)
            got = client.detect(np.frombuffer(data, np.uint8))
            assert len(got["scores"]) == len(want["scores"]), name
            found += len(want["scores"])
            np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1.0, err_msg=name)
            np.testing.assert_allclose(got["landmarks"], want["landmarks"], atol=1.0, err_msg=name)
            np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5, err_msg=name)
            to_precision = max(to_precision, float(np.abs(got["scores"] - want["scores"]).max(initial=0)))
            n = min(len(got["scores"]), len(plain["scores"]))
            to_fp32 = max(to_fp32, float(np.abs(got["scores"][:n] - plain["scores"][:n]).max(initial=0)))
        assert found > 0
        assert to_fp32 > 10 * max(to_precision, 1e-7), (to_fp32, to_precision)
        with pytest.raises(ServingError, match="JPEG or PNG"):
            client.detect(np.frombuffer(b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(64), np.uint8))
        assert client.is_ready()


@pytest.fixture(scope="module")
def int8_dir(onnx_dir, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime.quantization")
    from export.quantize_int8 import DETECTOR_INT8_FILE, Int8Settings, calibrate, prepare_graph, quantize_graph

    out = tmp_path_factory.mktemp("int8")
    for name in ("detector.onnx", "keypoint_head_portable.onnx"):
        shutil.copy(onnx_dir / name, out / name)
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.standard_normal((1, 3, 128, 192)).astype(np.float32)} for _ in range(4)]
    settings = Int8Settings()
    prepared = prepare_graph(out / "detector.onnx", out / "prepared.onnx")
    cache = calibrate(prepared, feeds, out / "calibration.json", settings, progress=False)
    quantize_graph(prepared, out / DETECTOR_INT8_FILE, cache, settings, out / "detector.onnx", feeds)
    return out


def test_int8_server_answers_as_the_int8_pipeline_in_process(int8_dir, photos, tmp_path):
    pytest.importorskip("openvino")
    from maskface.runtimes.openvino_runtime import OpenVinoPredictor, OpenVinoRuntime
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime, graph_paths
    from maskface.serving.repository import read_manifest, render_repository

    repo = render_repository("cpu", tmp_path / "repo", onnx_dir=int8_dir, params=_params(), precision="int8")
    assert read_manifest(repo)["params"]["precision"] == "int8"
    predictor = OpenVinoPredictor(OpenVinoRuntime(int8_dir, "int8", threads=1), low_inference(), max_side=MAX_SIDE)
    fp32 = OnnxPredictor(OrtRuntime(*graph_paths(int8_dir, "fp32"), threads=1), low_inference(), max_side=MAX_SIDE)
    server = _start(repo)
    try:
        _check_served(server, photos, predictor, fp32)
    finally:
        report = server.stop()
        assert_stopped_cleanly(server, report)
        server.cleanup()


def test_bf16_server_answers_as_the_bf16_pipeline_in_process(onnx_dir, photos, tmp_path):
    pytest.importorskip("openvino")
    from maskface.runtimes import openvino_runtime as ovr
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime, graph_paths
    from maskface.serving.repository import render_repository

    support = ovr.openvino_bf16_support()
    if not support.native:
        pytest.skip(f"no native BF16 on this CPU: {support.reason}")
    repo = render_repository("cpu", tmp_path / "repo", onnx_dir=onnx_dir, params=_params(), precision="bf16")
    assert (repo / "maskface_detector" / "1" / "detector.onnx").is_file()
    predictor = ovr.OpenVinoPredictor(ovr.OpenVinoRuntime(onnx_dir, "bf16", threads=1), low_inference(),
                                      max_side=MAX_SIDE)
    fp32 = OnnxPredictor(OrtRuntime(*graph_paths(onnx_dir, "fp32"), threads=1), low_inference(), max_side=MAX_SIDE)
    server = _start(repo)
    try:
        _check_served(server, photos, predictor, fp32)
    finally:
        report = server.stop()
        assert_stopped_cleanly(server, report)
        server.cleanup()
