"""The client honours grpc:// and http:// URLs, says so when pointed at the wrong kind of port,
filters by score and prints one line per face (no tritonserver needed)."""
from __future__ import annotations

import json
from concurrent import futures

import numpy as np
import pytest

from maskface.serving.client import MaskFaceClient, ServingError, format_results, keep_scores_at_least, parse_url


@pytest.mark.parametrize("url, protocol, expected", [
    ("127.0.0.1:8000", None, ("127.0.0.1:8000", "http", False)),
    ("grpc://127.0.0.1:8001", None, ("127.0.0.1:8001", "grpc", False)),
    ("http://example:80/", None, ("example:80", "http", False)),
    ("https://example:443", None, ("example:443", "http", True)),
    ("127.0.0.1:8001", "grpc", ("127.0.0.1:8001", "grpc", False)),
    ("grpc://h:1", "grpc", ("h:1", "grpc", False)),
])
def test_the_scheme_picks_the_protocol(url, protocol, expected):
    assert parse_url(url, protocol) == expected


@pytest.mark.parametrize("url, protocol, message", [
    ("grpc://h:1", "http", "says grpc"),
    ("ftp://h:1", None, "unsupported URL scheme"),
    ("http://h:1/v2/models", None, "host:port"),
])
def test_bad_urls_are_refused_with_the_reason(url, protocol, message):
    with pytest.raises(ValueError, match=message):
        parse_url(url, protocol)


def test_a_grpc_url_makes_a_grpc_client():
    with MaskFaceClient("grpc://127.0.0.1:1") as client:
        assert (client.protocol, client.url) == ("grpc", "127.0.0.1:1")


def test_http_client_on_a_grpc_port_says_which_port_it_is():
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with MaskFaceClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert not client.is_live()
            with pytest.raises(ServingError, match=rf"is it the grpc port\?.*grpc://127.0.0.1:{port}"):
                client.detect(b"\xff\xd8\xff")
    finally:
        server.stop(0)


def test_score_threshold_and_one_line_per_face():
    faces = {"boxes": np.arange(12, dtype=np.float32).reshape(3, 4), "scores": np.array([0.9, 0.4, 0.6], np.float32),
             "landmarks": np.zeros((3, 5, 2), np.float32), "landmark_scores": np.ones((3, 5), np.float32)}
    kept = keep_scores_at_least(faces, 0.5)
    np.testing.assert_array_equal(kept["scores"], np.array([0.9, 0.6], np.float32))
    np.testing.assert_array_equal(kept["boxes"][1], [8, 9, 10, 11])
    assert keep_scores_at_least(faces, None) is faces

    results = [{"image": "a.jpg", "faces": [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "landmarks": [[1.0, 2.0]] * 5,
                                            "landmark_scores": [1.0] * 5}] * 2},
               {"image": "b.jpg", "faces": []}, {"image": "c.jpg", "error": "refused"}]
    text = format_results(results)
    assert json.loads(text) == results
    lines = text.splitlines()
    assert sum('"box"' in line for line in lines) == 2 and len(lines) == 8  # [, a, 2 faces, ], b, c, ]
    assert format_results([]) == "[]"
