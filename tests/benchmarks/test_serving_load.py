"""benchmarks/serving.py: URL parsing, response checks, percentiles, real JPEG requests, a clear exit when
nothing listens, and a short closed-loop run (concurrency 1 and 2, 4 requests each) against a real tritonserver
serving the cpu target on loopback. Only counts and report contents are asserted, never a time.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import serving


def test_serving_url_parsing():
    assert serving.parse_url("127.0.0.1:8000", None) == ("127.0.0.1:8000", "http")
    assert serving.parse_url("grpc://127.0.0.1:8001", None) == ("127.0.0.1:8001", "grpc")
    assert serving.parse_url("http://localhost:8000/", "http") == ("localhost:8000", "http")
    for bad, proto in (("https://127.0.0.1:8000", None), ("127.0.0.1", None), ("grpc://127.0.0.1:1", "http"),
                       ("http://127.0.0.1:8000/v2", None)):
        with pytest.raises(ValueError):
            serving.parse_url(bad, proto)


def test_serving_response_check_and_percentiles():
    ok = {"boxes": np.zeros((3, 4), np.float32), "scores": np.ones(3, np.float32),
          "landmarks": np.zeros((3, 5, 2), np.float32)}
    assert serving.check_response(ok) == 3
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "landmarks": np.zeros((0, 5, 2), np.float32)}
    assert serving.check_response(empty) == 0
    with pytest.raises(ValueError):
        serving.check_response({**ok, "boxes": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError):
        serving.check_response({**ok, "landmarks": None})
    p = serving.percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["max"] == 100.0
    assert serving.percentiles([])["p50"] is None


def test_serving_sample_requests_are_real_jpegs():
    images = serving.sample_jpegs()
    assert len(images) >= 3 and images[0]["name"] == "astronaut.jpg"
    assert all(i["bytes"][:3] == b"\xff\xd8\xff" and i["width"] > 100 for i in images)


def test_serving_reports_an_unreachable_server(capsys):
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = serving.main(["--url", f"127.0.0.1:{port}", "--requests", "1", "--duration", "1", "--timeout", "2"])
    assert code == 2
    assert "no Triton server answers" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- a real server

# The same tiny graph shapes as tests/serving (narrow mbv2; serving does not care about the widths), so that a
# request costs ~0.1 s on 2 cores. tests/serving's session-scoped `server` fixture is not visible from this
# folder, so this module starts its own (library code: maskface.serving.repository + .server), on loopback.


def _tiny_config():
    from maskface.config import ContextConfig, FPNConfig, get_config

    cfg = get_config("mbv2")
    cfg.fpn = FPNConfig(channels=64, gn_groups=8)
    cfg.context = ContextConfig(branch1=32, trunk=32, branch2=16, trunk2=48, branch3=16, gn_groups=8)
    cfg.keypoints.conv_channels, cfg.keypoints.gn_groups, cfg.keypoints.num_convs = 64, 8, 4
    return cfg


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    import torch

    from export.export_onnx import export_all
    from maskface.modeling.maskface import build_model
    from maskface.serving.repository import ServingParams, render_repository
    from maskface.serving.server import ServerError, TritonServer, find_tritonserver

    try:
        find_tritonserver()
    except ServerError as exc:
        pytest.skip(f"no tritonserver here: {exc}")
    root = tmp_path_factory.mktemp("serving_bench")
    torch.manual_seed(0)
    export_all(build_model(config=_tiny_config()).eval(), root / "onnx")
    params = ServingParams.from_configs(max_side=192, preprocess_instances=1)
    repo = render_repository("cpu", root / "repo", onnx_dir=root / "onnx", params=params)
    server = TritonServer(repo, ready_timeout=180.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_serving_load_against_a_real_server(triton, protocol, tmp_path):
    url = triton.http_url if protocol == "http" else f"grpc://{triton.grpc_url}"
    assert url.split("//")[-1].startswith("127.0.0.1:")  # loopback only
    code = serving.main(["--url", url, "--concurrency", "1,2", "--requests", "4", "--duration", "60",
                         "--warmup", "1", "--timeout", "60", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "serving.json").read_text())
    assert report["settings"]["protocol"] == protocol and report["server"]["input_shape"] == [-1]
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["requests_sent"] == 4 and level["succeeded"] == 4 and level["failed"] == 0
        assert level["throughput_rps"] > 0 and {"p50", "p90", "p99"} <= set(level["latency_ms"])
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"]
    md = (tmp_path / "serving.md").read_text()
    assert "| concurrency | requests | ok | failed | throughput (req/s) | p50 ms | p90 ms | p99 ms |" in md
    assert (tmp_path / "serving.png").read_bytes()[:4] == b"\x89PNG"
