"""A real tritonserver (cpu target) answering over HTTP and gRPC: parity with the in-process pipeline,
bad inputs, load, the `maskface serve` / `maskface client` commands and the lifecycle."""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from maskface.config import InferenceConfig
from maskface.preprocess import decode_image
from maskface.serving.client import MaskFaceClient, ServingError
from maskface.serving.server import ServerError, TritonServer, _process_group_members, find_tritonserver

from serving_testlib import MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES, MAX_SIDE, ServeCommand

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")
try:
    find_tritonserver()
except ServerError as _exc:  # neither nvidia-pytriton nor a system install
    pytest.skip(f"no tritonserver: {_exc}", allow_module_level=True)

PROTOCOLS = ("http", "grpc")
PIXEL_TOL = 1e-3  # px, boxes and landmarks in original image pixels


def url_of(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture(params=PROTOCOLS)
def client(request, server):
    with MaskFaceClient(url_of(server, request.param), request.param, timeout=60) as c:
        yield c


def mismatch(got: dict, ref: dict) -> str | None:
    """None when the server's answer equals the reference (pixels within PIXEL_TOL), else why not."""
    for key in ("boxes", "scores", "landmarks", "landmark_scores"):
        if got[key].shape != ref[key].shape:
            return f"{key}: shape {got[key].shape} != {ref[key].shape}"
    for key, tol in (("boxes", PIXEL_TOL), ("landmarks", PIXEL_TOL), ("scores", 1e-6), ("landmark_scores", 1e-5)):
        if got[key].size and np.abs(got[key] - ref[key]).max() > tol:
            return f"{key}: max abs diff {np.abs(got[key] - ref[key]).max():.3g} > {tol}"
    return None


def test_server_binds_loopback_with_the_required_flags(server):
    command = server.command()
    assert server.host == "127.0.0.1"
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--disable-auto-complete-config",
                 "--allow-gpu-metrics=false", "--allow-metrics=false"):
        assert flag in command
    assert f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}" in command
    assert server.is_ready()
    assert server.shm_segments(), "the Python backend's shared memory should use our unique prefix"


def test_photos_over_http_and_grpc_match_in_process(client, photos, reference):
    for name, data in photos.items():
        got = client.detect(data)
        ref = reference[name]
        assert len(ref["scores"]) > 0, f"{name}: the reference must keep faces (lowered threshold)"
        assert got["landmarks"].shape[1:] == (5, 2)
        assert mismatch(got, ref) is None, f"{name} over {client.protocol}: {mismatch(got, ref)}"
    # a decoded BGR array is sent as lossless PNG: same pixels, same answer
    got = client.detect(decode_image(photos["astronaut"]))
    assert mismatch(got, reference["astronaut"]) is None


def png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def test_bad_inputs_get_errors_and_the_server_keeps_serving(client, photos, reference):
    ok, too_many_pixels = cv2.imencode(".png", np.zeros((1001, 1000, 3), np.uint8))  # 1.001 MPix > 1 MPix
    assert ok and 1001 * 1000 > MAX_IMAGE_PIXELS
    rng = np.random.default_rng(0)
    cases = [
        ("not an image", rng.integers(0, 256, 5000).astype(np.uint8), None, r"is not a JPEG or PNG file"),
        ("corrupt PNG", np.frombuffer(png_header_only(50, 40) + bytes(100), np.uint8), None, r"could not decode"),
        ("empty request", np.zeros(0, np.uint8), None, r"empty request"),
        ("too many pixels", too_many_pixels.reshape(-1), None, r"1000x1001 = 1001000 pixels exceeds the limit of 1000000"),
        ("decompression bomb", np.frombuffer(png_header_only(60000, 60000), np.uint8), None, r"exceeds the limit of 1000000 pixels"),
        ("too many bytes", np.zeros(MAX_REQUEST_BYTES + 1, np.uint8), None, rf"exceeds the limit of {MAX_REQUEST_BYTES} bytes"),
        ("wrong dtype FP32", np.zeros(100, np.float32), None, r"data-type is 'FP32', but model 'maskface' expects 'UINT8'"),
        ("wrong dtype INT32 as bytes", np.zeros(100, np.int32), None, r"expects 'UINT8'"),
        ("wrong shape", np.frombuffer(photos["astronaut"], np.uint8)[:1000].reshape(2, 500), None, r"(?i)shape"),
    ]
    for what, data, datatype, message in cases:
        with pytest.raises(ServingError, match=message) as info:
            client.infer_raw(data, datatype)
        assert str(info.value.status) in ("400", "StatusCode.INVALID_ARGUMENT"), f"{what}: {info.value.status}"
        assert client.is_live() and client.is_ready(), f"server not healthy after {what}"
    got = client.detect(photos["chelsea"])
    assert mismatch(got, reference["chelsea"]) is None


def test_bounded_load_same_answers(server, photos, reference, capsys):
    """8 concurrent clients (4 HTTP, 4 gRPC) x 25 requests, round-robin over the photos."""
    names = list(photos)
    clients, per_client = 8, 25

    def worker(index: int):
        protocol = PROTOCOLS[index % 2]
        latencies, problems = [], []
        with MaskFaceClient(url_of(server, protocol), protocol, timeout=120) as c:
            for j in range(per_client):
                name = names[(index + j) % len(names)]
                start = time.perf_counter()
                try:
                    got = c.detect(photos[name])
                except ServingError as exc:
                    problems.append(f"{protocol} {name}: {exc}")
                    continue
                latencies.append(time.perf_counter() - start)
                why = mismatch(got, reference[name])
                if why:
                    problems.append(f"{protocol} {name}: {why}")
        return latencies, problems

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    latencies = np.array([t for lat, _ in results for t in lat])
    problems = [p for _, probs in results for p in probs]
    import tritonclient.http as http

    with http.InferenceServerClient(server.http_url) as stats_client:
        stats = stats_client.get_inference_statistics("maskface_pipeline",  # the cpu ensemble's one step
                                                      headers=server.admin_headers)["model_stats"][0]
    with capsys.disabled():
        print(f"\n[serving load] cpu target, {clients} clients x {per_client} requests (HTTP+gRPC), "
              f"images <= {MAX_SIDE} px: {len(latencies)} ok in {wall:.1f} s = {len(latencies) / wall:.1f} req/s, "
              f"latency p50 {np.percentile(latencies, 50) * 1e3:.0f} ms, p99 {np.percentile(latencies, 99) * 1e3:.0f} ms; "
              f"maskface_pipeline ran {stats['inference_count']} requests")
    assert problems == []
    assert int(stats["inference_count"]) >= clients * per_client
    assert len(latencies) == clients * per_client
    assert server.is_ready()


def test_client_command_prints_the_faces(server, photos, reference, tmp_path, capsys):
    from maskface.cli import main

    path = tmp_path / "astronaut.jpg"
    path.write_bytes(photos["astronaut"])
    out_file = tmp_path / "faces.json"
    assert main(["client", str(path), "--url", f"http://{server.http_url}", "--json", "--out", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    faces = printed[0]["faces"]
    ref = reference["astronaut"]
    assert len(faces) == len(ref["scores"]) > 0
    for face, box, landmarks in zip(faces, ref["boxes"], ref["landmarks"]):
        np.testing.assert_allclose(face["box"], box, atol=1e-3 + 5e-4)  # printed with 3 decimals
        np.testing.assert_allclose(face["landmarks"], landmarks, atol=1e-3 + 5e-4)
    assert main(["client", str(path), "--protocol", "grpc", "--url", server.grpc_url]) == 0
    assert f"{path}: {len(faces)} face(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["client", str(bad), "--url", server.http_url]) == 1
    assert "is not a JPEG or PNG file" in capsys.readouterr().err


def test_serve_command_default_threshold_no_face(onnx_dir, photos, graphs, tmp_path):
    """`maskface serve` renders the cpu target (default thresholds), serves it on free ports until
    SIGINT and stops cleanly; a photo without a face returns N = 0 with correctly shaped outputs."""
    from serving_testlib import MAX_SIDE as side
    from maskface.serving.onnx_graphs import OnnxPredictor

    no_face = {"coffee": photos["coffee"], "gray": cv2.imencode(".png", np.full((120, 160, 3), 127, np.uint8))[1].tobytes()}
    predictor = OnnxPredictor(graphs, InferenceConfig(), max_side=side)
    for data in no_face.values():
        assert len(predictor(decode_image(data))["scores"]) == 0  # the reference agrees: no face

    repo = tmp_path / "repo"
    command = [sys.executable, "-m", "maskface.cli", "serve", "--target", "cpu", "--repo", str(repo),
               "--onnx-dir", str(onnx_dir), "--http-port", "0", "--grpc-port", "0", "--max-side", str(side),
               "--param", "preprocess_instances=1", "--ready-timeout", "180"]
    with ServeCommand(command) as serve:
        assert serve.http_url.startswith("127.0.0.1:") and serve.grpc_url.startswith("127.0.0.1:")
        for protocol, url in (("http", serve.http_url), ("grpc", serve.grpc_url)):
            with MaskFaceClient(url, protocol) as c:
                for name, data in no_face.items():
                    got = c.detect(data)
                    shapes = [got[k].shape for k in ("boxes", "scores", "landmarks", "landmark_scores")]
                    assert shapes == [(0, 4), (0,), (0, 5, 2), (0, 5)], f"{protocol} {name}: {shapes}"
                    assert all(got[k].dtype == np.float32 for k in got)
    text, server_pid = serve.text, serve.server_pid
    assert serve.returncode == 0, text
    assert "serve: stopped (exit code 0)" in text and "cleaned up" not in text, text
    if server_pid is not None:
        assert _process_group_members(server_pid) == []


def test_ready_timeout_kills_a_hanging_server(tmp_path):
    """A model whose initialize() never returns: start() gives up after ready_timeout, kills the whole
    process group and removes its shared memory."""
    model = tmp_path / "repo" / "maskface"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "maskface"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1 ] } ]\n'
        'output [ { name: "BOXES" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n'
        'instance_group [ { count: 1 kind: KIND_CPU } ]\n')
    (model / "1" / "model.py").write_text(
        "import time\n\n\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(600)\n\n"
        "    def execute(self, requests):\n        return []\n")
    server = TritonServer(tmp_path / "repo", ready_timeout=5)
    try:
        with pytest.raises(ServerError, match="not ready after 5 s"):
            server.start()
        assert not server.is_running()
        assert _process_group_members(server.last_pgid) == []
        assert server.shm_segments() == []
    finally:
        server.stop()
        server.cleanup()


def test_stopping_twice_is_harmless(server):
    spare = TritonServer(server.repository)
    assert spare.stop().returncode is None  # never started: nothing to do
    spare.cleanup()
