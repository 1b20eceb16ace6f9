"""Hostile clients against the real tritonserver (cpu target): direct sub-model calls, image bombs,
oversized bodies, malformed requests through the gateway, a killed stage and a killed launcher.

Memory is measured as the summed RSS of the server's process group (tritonserver + stubs) and
the sizes of its shared-memory regions, before and after."""
from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskface.serving.client import MaskFaceClient, ServingError
from maskface.serving.server import (
    ServerError, _process_group_members, _stub_models, find_tritonserver, process_group_rss_mb,
)

from serving_testlib import MAX_DETECTIONS, MAX_IMAGE_PIXELS, MAX_REQUEST_BYTES, MAX_SIDE

pytest.importorskip("tritonclient.http")
try:
    find_tritonserver()
except ServerError as _exc:
    pytest.skip(f"no tritonserver: {_exc}", allow_module_level=True)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

BAD_REQUEST = ("400", "StatusCode.INVALID_ARGUMENT")
MB = 1 << 20


def group_rss_mb(pgid: int) -> float:
    return process_group_rss_mb(pgid)


def shm_sizes(server) -> dict[str, int]:
    return {name: os.path.getsize(f"/dev/shm/{name}") for name in server.shm_segments()}


def stage_region_mb(server, model: str) -> float:
    """Size of a stage's Python-backend shared-memory region (the stub's argv: stub, model.py, region)."""
    for pid, name in _stub_models(server.pid).items():
        if name == model:
            region = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2].decode()
            return os.path.getsize(f"/dev/shm/{region}") / MB
    raise AssertionError(f"no stub of {model}")


def infer(server, model: str, inputs: dict[str, np.ndarray], outputs: list[str], protocol: str = "http"):
    """A direct call of one model of the repository, as any client can make it."""
    module = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = module.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        result = client.infer(model, tensors, outputs=[module.InferRequestedOutput(n) for n in outputs])
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def refused(server, model, inputs, outputs, match: str, protocol: str = "http") -> float:
    """The call fails with 400 / INVALID_ARGUMENT and `match` in the message; returns its seconds."""
    start = time.perf_counter()
    with pytest.raises(InferenceServerException) as info:
        infer(server, model, inputs, outputs, protocol)
    elapsed = time.perf_counter() - start
    assert str(info.value.status()) in BAD_REQUEST, f"{model}: {info.value.status()} {info.value.message()}"
    assert re.search(match, info.value.message()), info.value.message()
    return elapsed


@pytest.fixture(scope="module")
def features(server):
    """m2..m6 of a 192 x 192 input, from a direct detector call."""
    out = infer(server, "maskface_detector", {"images": np.zeros((1, 3, MAX_SIDE, MAX_SIDE), np.float32)},
                [f"m{i}" for i in range(2, 7)])
    assert out["m2"].shape[2:] == (MAX_SIDE // 4, MAX_SIDE // 4)
    return out


def test_direct_submodel_calls_are_bounded_like_the_ensemble(server, features, capsys):
    roi = np.float32([0, 10, 20, 60, 90])
    times = {}
    for protocol in ("http", "grpc"):
        times[f"keypoints 10,000 rois ({protocol})"] = refused(
            server, "maskface_keypoints", {**features, "rois": np.tile(roi, (10_000, 1))},
            ["landmarks"], rf"10000 rois exceed the limit of {MAX_DETECTIONS}", protocol)
        times[f"detector 1280x1280 ({protocol})"] = refused(
            server, "maskface_detector", {"images": np.zeros((1, 3, 1280, 1280), np.float32)}, ["scores"],
            rf"1280x1280 exceeds {MAX_SIDE} px per side", protocol)
    # Refused inputs do not stay in shared memory: a kept exception (its traceback holding the input)
    # made the detector's region grow by ~20 MB per refusal until the stub's GC ran (776 MB in a soak).
    region = stage_region_mb(server, "maskface_detector")
    for _ in range(8):
        refused(server, "maskface_detector", {"images": np.zeros((1, 3, 1280, 1280), np.float32)}, ["scores"],
                "exceeds")
    assert stage_region_mb(server, "maskface_detector") == region
    # the bound is the ensemble's own: max_detections ROIs still work
    ok = infer(server, "maskface_keypoints", {**features, "rois": np.tile(roi, (MAX_DETECTIONS, 1))}, ["landmarks"])
    assert ok["landmarks"].shape == (MAX_DETECTIONS, 5, 2)
    for rois, match in [(np.float32([[0, np.nan, 20, 60, 90]]), "finite"),
                        (np.float32([[0, 1e30, 20, 1e30, 90]]), "inside the 192x192"),
                        (np.float32([[0, 60, 20, 10, 90]]), "x1 <= x2")]:
        refused(server, "maskface_keypoints", {**features, "rois": rois}, ["landmarks"], match)

    good = {"rois": np.float32([[0, 10, 20, 60, 90]]), "det_scores": np.float32([0.9]),
            "landmarks": np.zeros((1, 5, 2), np.float32), "landmark_scores": np.zeros((1, 5), np.float32),
            "scale_xy": np.float64([0.5, 0.5]), "original_size": np.int32([300, 384])}
    outputs = ["BOXES", "SCORES"]
    assert infer(server, "maskface_postprocess", good, outputs)["BOXES"].tolist() == [[20, 40, 120, 180]]
    for change, match in [({"scale_xy": np.float64([0, 0.5])}, "finite and positive"),
                          ({"scale_xy": np.float64([np.nan, 0.5])}, "finite and positive"),
                          ({"original_size": np.int32([-300, 384])}, "must be positive"),
                          ({"rois": np.float32([[0, 1e30, 20, 1e30, 90]])}, "inside the 192x192"),
                          ({"rois": np.float32([[0, 60, 20, 10, 90]])}, "x1 <= x2"),
                          ({"det_scores": np.float32([0.9, 0.8])}, r"det_scores \[2\] does not match 1 rois")]:
        refused(server, "maskface_postprocess", {**good, **change}, outputs, match)
    assert server.is_ready()
    with capsys.disabled():
        print("\n[hostile] refusal times: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()))


def test_image_bombs_are_refused_before_any_pixel_is_allocated(server, capsys):
    """A lossless WebP (1.4 kB) and a TIFF (1.3 MB) of 6000 x 6000 decode to 108 MB each; two of
    each at once must not move the server's memory."""
    bomb = np.zeros((6000, 6000, 3), np.uint8)
    files = {"webp": cv2.imencode(".webp", bomb, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].reshape(-1),
             "tiff": cv2.imencode(".tiff", bomb)[1].reshape(-1)}
    del bomb
    assert files["webp"].size < 2000 and files["tiff"].size < MAX_REQUEST_BYTES
    before, shm_before = group_rss_mb(server.pid), shm_sizes(server)

    def send(kind):
        with MaskFaceClient(server.http_url) as c:
            with pytest.raises(ServingError, match="is not a JPEG or PNG file") as info:
                c.infer_raw(files[kind], "UINT8")
            return str(info.value.status)

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(send, ["webp", "tiff", "webp", "tiff"]))
    after, shm_after = group_rss_mb(server.pid), shm_sizes(server)
    with capsys.disabled():
        print(f"\n[hostile] 2 WebP + 2 TIFF bombs of 6000x6000 (108 MB decoded each): server RSS {before:.0f} -> "
              f"{after:.0f} MB")
    assert statuses == ["400"] * 4
    assert after - before < 50, f"server RSS grew {after - before:.0f} MB"  # one decode alone is 108 MB
    assert shm_after == shm_before
    assert server.is_ready()


def test_body_above_the_limit_is_refused_before_it_is_read(server, gateway, capsys):
    """300 MB announced to the gateway: 413 at once, Triton never sees it (memory and shared memory
    unchanged); the largest accepted body goes through."""
    before, shm_before = group_rss_mb(server.pid), shm_sizes(server)
    for expect in (True, False):
        conn = http.client.HTTPConnection(gateway.host, gateway.port, timeout=30)
        conn.putrequest("POST", "/v2/models/maskface/infer")
        conn.putheader("Content-Length", str(300 * MB))
        conn.putheader("Inference-Header-Content-Length", "128")
        if expect:
            conn.putheader("Expect", "100-continue")
        conn.endheaders()
        response = conn.getresponse()  # answered from the headers alone: not a byte of body sent
        body = json.loads(response.read())
        assert response.status == 413 and "exceeds the limit" in body["error"], body
        with pytest.raises(OSError):  # and the connection is closed: the body is never read
            for _ in range(300):
                conn.send(bytes(MB))
        conn.close()
    with MaskFaceClient(gateway.url) as c:  # a body just under the limit reaches the stages (which refuse zeros)
        with pytest.raises(ServingError, match="is not a JPEG or PNG") as info:
            c.infer_raw(np.zeros(MAX_REQUEST_BYTES - 1, np.uint8), "UINT8")
        assert str(info.value.status) == "400"
    after, shm_after = group_rss_mb(server.pid), shm_sizes(server)
    with capsys.disabled():
        print(f"\n[hostile] 300 MB body via the gateway: 413; server RSS {before:.0f} -> {after:.0f} MB, "
              f"shm {sum(shm_before.values()) / MB:.0f} -> {sum(shm_after.values()) / MB:.0f} MB")
    assert after - before < 30
    assert shm_after == shm_before


def post_json(gateway, path: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{gateway.url}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_client_errors_answer_400_through_the_gateway(gateway, server, photos):
    """Triton itself answers these with 500 (its JSON parser's errors); the gateway with 400."""
    infer_path = "/v2/models/maskface/infer"

    def image(shape, data, datatype="UINT8", name="IMAGE"):
        return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).encode()

    cases = [
        ("malformed JSON", b'{"inputs": [', "not valid JSON"),
        ("shape [-1]", image([-1], [1, 2, 3]), r"shape must be \[n\] with n >= 0"),
        ("UINT8 value 300", image([3], [300, 2, 3]), "integers in 0..255"),
        ("UINT8 value -1", image([3], [-1, 2, 3]), "integers in 0..255"),
        ("float bytes", image([3], [1.5, 2, 3]), "integers in 0..255"),
        ("shape / data mismatch", image([5], [1, 2, 3]), "flat list of 5 byte values"),
        ("no inputs", b'{"foo": 1}', "exactly one input"),
        ("wrong datatype", image([3], [1, 2, 3], "FP32"), "datatype UINT8"),
        ("unknown input", image([3], [1, 2, 3], name="images"), "the only input is IMAGE"),
    ]
    for what, body, match in cases:
        status, text = post_json(gateway, infer_path, body)
        assert status == 400 and re.search(match, json.loads(text)["error"]), f"{what}: {status} {text}"
    # the stages' own 400s pass through unchanged; good JSON requests work
    status, text = post_json(gateway, infer_path, image([4], [1, 2, 3, 4]))
    assert status == 400 and "is not a JPEG or PNG file" in text
    data = list(photos["chelsea"])
    status, text = post_json(gateway, infer_path, image([len(data)], data))
    assert status == 200 and {o["name"] for o in json.loads(text)["outputs"]} >= {"BOXES", "SCORES"}
    # only the ensemble is reachable; the admin APIs are not there either
    for path in ("/v2/models/maskface_keypoints/infer", "/v2/logging", "/v2/repository/index",
                 "/v2/systemsharedmemory/region/x/register"):
        assert post_json(gateway, path, b"{}")[0] == 404, path
    with urllib.request.urlopen(f"http://{gateway.url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    # a client error answered by a stage directly: det_scores not matching the rois
    good = {"rois": np.float32([[0, 10, 20, 60, 90]]), "det_scores": np.float32([0.9, 0.1]),
            "landmarks": np.zeros((1, 5, 2), np.float32), "landmark_scores": np.zeros((1, 5), np.float32),
            "scale_xy": np.float64([0.5, 0.5]), "original_size": np.int32([300, 384])}
    refused(server, "maskface_postprocess", good, ["BOXES"], "does not match 1 rois")


def test_admin_apis_need_the_key(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for call in (lambda **kw: client.update_log_settings({"log_verbose_level": 1}, **kw),
                     lambda **kw: client.get_inference_statistics("maskface", **kw),
                     lambda **kw: client.register_system_shared_memory("x", "/x", 64, **kw),
                     lambda **kw: client.unload_model("maskface_keypoints", **kw)):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert client.get_inference_statistics("maskface", headers=server.admin_headers)["model_stats"]
        assert client.is_server_ready() and client.is_model_ready("maskface")  # health/inference stay open
    finally:
        client.close()


# ----------------------------------------------------------------------------- the launcher


def _read_lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


class Launcher:
    """`maskface serve` in a subprocess on free ports, its output collected line by line."""

    def __init__(self, onnx_dir, repo, *extra):
        command = [sys.executable, "-m", "maskface.cli", "serve", "--target", "cpu", "--repo", str(repo),
                   "--onnx-dir", str(onnx_dir), "--http-port", "0", "--grpc-port", "0", "--max-side", str(MAX_SIDE),
                   "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--param", "preprocess_instances=1",
                   "--ready-timeout", "180", *extra]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=_read_lines, args=(self.proc.stdout, self.lines), daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.output)}")

    def finish(self, timeout: float = 120) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return "".join(self.output)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # nothing answers


def test_a_killed_stage_stops_the_launcher_with_a_clear_message(onnx_dir, photos, tmp_path, capsys):
    launcher = Launcher(onnx_dir, tmp_path / "repo", "--gateway-port", "0")
    server_pid = None
    try:
        ready = launcher.wait_for(r"serve: ready\s+http=(\S+)\s+grpc=(\S+).*pid=(\d+)")
        http_url, server_pid = ready.group(1), int(ready.group(3))
        gateway_url = launcher.wait_for(r"serve: gateway\s+http=(\S+)").group(1)
        with MaskFaceClient(gateway_url) as c:
            assert len(c.detect(photos["chelsea"])["scores"]) >= 0
        stubs = {model: pid for pid, model in _stub_models(server_pid).items()}
        assert set(stubs) >= {"maskface_preprocess", "maskface_keypoints", "maskface_postprocess"}
        os.kill(stubs["maskface_keypoints"], signal.SIGKILL)
        killed = time.monotonic()
        message = launcher.wait_for(r"serve: stage (\S+): its Python-backend stub \(pid (\d+)\) died", timeout=60)
        detected = time.monotonic() - killed
        assert message.group(1) == "maskface_keypoints" and int(message.group(2)) == stubs["maskface_keypoints"]
        output = launcher.finish()
        stopped = time.monotonic() - killed
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.finish()
    with capsys.disabled():
        print(f"\n[hostile] killed stub: launcher reported it after {detected:.1f} s, exited after {stopped:.1f} s")
    assert launcher.proc.returncode == 3, output
    assert "exiting with code 3 so that the supervisor restarts the service" in output
    assert http_status(f"http://{http_url}/v2/health/ready") == 0  # readiness fails: nothing answers
    assert http_status(f"http://{gateway_url}/v2/health/ready") == 0
    assert _process_group_members(server_pid) == []


def test_killing_the_launcher_takes_tritonserver_down(onnx_dir, tmp_path, capsys):
    launcher = Launcher(onnx_dir, tmp_path / "repo")
    ready = launcher.wait_for(r"serve: ready\s+http=(\S+)\s+grpc=(\S+).*pid=(\d+)")
    server_pid = int(ready.group(3))
    assert _process_group_members(server_pid)
    launcher.proc.kill()  # SIGKILL: no cleanup code of the launcher runs
    launcher.finish()
    killed = time.monotonic()
    deadline = killed + 60
    while _process_group_members(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with capsys.disabled():
        print(f"\n[hostile] launcher killed: tritonserver and its stubs gone after {time.monotonic() - killed:.1f} s")
    assert _process_group_members(server_pid) == [], "tritonserver outlived its launcher"


def test_the_backends_unhealthy_verdict_in_the_log_counts_once(tmp_path):
    """A stub that hangs (alive, but not answering) shows only in the log: each new line is reported
    once, a line still being written is kept for the next look."""
    from maskface.serving.server import TritonServer

    (tmp_path / "repo").mkdir()
    server = TritonServer(tmp_path / "repo", work_dir=tmp_path / "work")
    server.work_dir.mkdir()
    server.log_path.write_text("I1202 model_lifecycle.cc] successfully loaded 'maskface_nms'\n")
    assert server._unhealthy_in_log() == []
    with open(server.log_path, "a") as f:
        f.write("E1202 infer_handler.cc] Stub process 'maskface_nms_0_0' is not healthy.\nE1202 partial: Stub pro")
    assert server._unhealthy_in_log() == ["E1202 infer_handler.cc] Stub process 'maskface_nms_0_0' is not healthy."]
    assert server._unhealthy_in_log() == []
    with open(server.log_path, "a") as f:
        f.write("cess 'maskface_keypoints_0_0' is not healthy.\n")
    assert server._unhealthy_in_log() == ["E1202 partial: Stub process 'maskface_keypoints_0_0' is not healthy."]
