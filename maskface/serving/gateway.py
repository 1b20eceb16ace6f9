"""An HTTP front for the `maskface` ensemble: what a deployment puts between clients and Triton.

    maskface serve ... --gateway-port 8080        # clients talk to :8080, Triton stays on loopback
    with Gateway(server.http_url, max_request_bytes=32 << 20) as gw: ...   # from Python (tests)

What Triton does not do, and the gateway does (triton_models/README.md, "Production"):
- Only the ensemble is reachable: GET /v2/health/live, /v2/health/ready, /v2/models/maskface,
  /v2/models/maskface/ready and POST /v2/models/maskface/infer. Everything else, sub-models and
  admin APIs included, is 404. Triton has no per-model access control.
- The body size is refused from Content-Length before the body is read (413), a body without
  Content-Length is refused (411). Triton reads the whole body first (no option in the bundled
  2.x; gRPC accepts messages up to 2 GB), and the preprocess stage's shared memory grows to the
  largest input it has seen and never shrinks.
- The inference header is checked (400 with the reason): JSON, exactly one input IMAGE of
  datatype UINT8, shape [n] with n >= 0, JSON data of n integers in 0..255 or a binary part of
  exactly n bytes. Triton answers malformed JSON, shape [-1] and out-of-range values with 500.
Everything accepted is forwarded unchanged to Triton's HTTP port (one keep-alive connection per
gateway thread), and Triton's answer is passed back unchanged.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .repository import ENSEMBLE

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_ALLOWANCE = 64 << 10  # the JSON inference header in front of the binary image bytes
MAX_JSON_BYTES = 4 << 20  # an all-JSON request: parsing costs ~30x its size in Python objects
OUTPUT_NAMES = ("BOXES", "SCORES", "LANDMARKS", "LANDMARK_SCORES")
GET_ROUTES = ("/v2/health/live", "/v2/health/ready", f"/v2/models/{ENSEMBLE}", f"/v2/models/{ENSEMBLE}/ready")
INFER_ROUTE = f"/v2/models/{ENSEMBLE}/infer"


class BadRequest(ValueError):
    """The request breaks the ensemble's contract (answered 400 with this message)."""


def check_infer_header(header: dict[str, Any], binary_bytes: int | None) -> None:
    """The KServe v2 inference header of an ensemble request; binary_bytes: size of the binary
    part after the header (None: an all-JSON request)."""
    if not isinstance(header, dict):
        raise BadRequest("the request body must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest("'inputs' must hold exactly one input, IMAGE")
    image = inputs[0]
    if image.get("name") != "IMAGE":
        raise BadRequest(f"the only input is IMAGE, got {str(image.get('name'))[:64]!r}")
    if image.get("datatype") != "UINT8":
        got = str(image.get("datatype"))[:32]
        raise BadRequest(f"IMAGE has datatype UINT8 (the encoded file's bytes), got {got!r}")
    shape = image.get("shape")
    if (not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool)
            or shape[0] < 0):
        raise BadRequest(f"IMAGE shape must be [n] with n >= 0 the number of bytes, got {str(shape)[:64]}")
    n = shape[0]
    params = image.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("IMAGE 'parameters' must be a JSON object")
    if "binary_data_size" in params:
        if binary_bytes is None:
            raise BadRequest(f"binary_data_size given but no {HEADER_LENGTH} header")
        if params["binary_data_size"] != n or binary_bytes != n:
            raise BadRequest(f"IMAGE shape [{n}] needs a binary part of {n} bytes (binary_data_size "
                             f"{str(params['binary_data_size'])[:32]}, body holds {binary_bytes})")
        if "data" in image:
            raise BadRequest("IMAGE has both binary data and a 'data' field")
    else:
        if binary_bytes:
            raise BadRequest(f"{binary_bytes} binary bytes follow the header but IMAGE has no binary_data_size")
        data = image.get("data")
        if not isinstance(data, list) or len(data) != n:
            raise BadRequest(f"IMAGE 'data' must be a flat list of {n} byte values (shape [{n}])")
        if not all(type(v) is int and 0 <= v <= 255 for v in data):
            raise BadRequest("IMAGE 'data' values must be integers in 0..255 (UINT8)")
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") in OUTPUT_NAMES
                                                 for o in outputs):
        raise BadRequest(f"'outputs' may only name {', '.join(OUTPUT_NAMES)}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 30  # a client that stops sending (slow body) is dropped
    server: "_GatewayServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the access log stays off
        pass

    # ------------------------------------------------------------------ replies

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               close: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._reply(status, json.dumps({"error": message}).encode(), close=close)

    def _forward(self, method: str, body: bytes | None = None) -> None:
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("content-type", HEADER_LENGTH.lower(), "accept-encoding")}
        try:
            status, reply_headers, data = self.server.upstream(method, self.path, body, headers)
        except OSError as exc:
            self._error(503, f"the inference server is not reachable: {exc}")
            return
        keep = {k: v for k, v in reply_headers if k.lower() in ("content-type", HEADER_LENGTH.lower(),
                                                                 "content-encoding")}
        self._reply(status, data, keep or {"Content-Type": "application/json"})

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path not in GET_ROUTES:
            self._error(404, f"not found: only the {ENSEMBLE} ensemble is served here")
            return
        if path in ("/v2/health/ready", f"/v2/models/{ENSEMBLE}/ready") and not self.server.extra_ready():
            self._error(503, "a serving stage is down")
            return
        self._forward("GET")

    do_HEAD = do_GET

    def _refuse_before_body(self) -> tuple[int, int | None] | None:
        """(Content-Length, header length) when the body may be read; else the refusal is sent
        (the connection then closes: the body is never read)."""
        if self.command != "POST" or self.path.split("?", 1)[0] != INFER_ROUTE:
            self._error(404, f"not found: only POST {INFER_ROUTE} is served here", close=True)
            return None
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "send the body with a Content-Length (no chunked encoding)", close=True)
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
            header_length = self.headers.get(HEADER_LENGTH)
            header_length = None if header_length is None else int(header_length)
        except ValueError:
            self._error(411, f"a numeric Content-Length is required (and {HEADER_LENGTH}, if given)", close=True)
            return None
        limit = self.server.max_body_bytes if header_length is not None else self.server.max_json_bytes
        if length < 0 or length > limit:
            self._error(413, f"request body of {length} bytes exceeds the limit of {limit} bytes"
                             + ("" if header_length is not None else
                                f" for all-JSON requests (send the image as binary data, {HEADER_LENGTH})"),
                        close=True)
            return None
        return length, header_length

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl sends it for large bodies): refuse before the client sends."""
        if self._refuse_before_body() is None:
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:  # noqa: N802
        checked = self._refuse_before_body()
        if checked is None:
            return
        length, header_length = checked
        body = self.rfile.read(length)
        if len(body) != length:
            self._error(400, f"the body ended after {len(body)} of {length} bytes", close=True)
            return
        try:
            if header_length is not None and not 0 <= header_length <= length:
                raise BadRequest(f"{HEADER_LENGTH} {header_length} is outside the body of {length} bytes")
            head = body if header_length is None else body[:header_length]
            try:
                header = json.loads(head)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the inference header is not valid JSON: {exc}") from None
            check_infer_header(header, None if header_length is None else length - header_length)
        except BadRequest as exc:
            self._error(400, str(exc))
            return
        self._forward("POST", body)


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, upstream_url: str, max_body_bytes: int, max_json_bytes: int,
                 extra_ready: Callable[[], bool], timeout: float):
        super().__init__(address, _Handler)
        self.upstream_url = upstream_url
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes
        self.extra_ready = extra_ready
        self.upstream_timeout = timeout
        self._local = threading.local()

    def upstream(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        """One request to Triton on this thread's keep-alive connection (reconnects once)."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                host, _, port = self.upstream_url.rpartition(":")
                conn = self._local.conn = http.client.HTTPConnection(host, int(port), timeout=self.upstream_timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Gateway:
    """The gateway on host:port (0 = a free port) in a background thread, in front of Triton's
    HTTP endpoint `upstream` (host:port)."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, max_request_bytes: int = 32 << 20,
                 max_json_bytes: int = MAX_JSON_BYTES, extra_ready: Callable[[], bool] = lambda: True,
                 upstream_timeout: float = 120.0):
        if max_request_bytes < 1 or max_json_bytes < 1:
            raise ValueError("max_request_bytes and max_json_bytes must be positive")
        self.max_request_bytes = int(max_request_bytes)
        self._server = _GatewayServer((host, port), upstream, max_request_bytes + HEADER_ALLOWANCE,
                                      max_json_bytes, extra_ready, upstream_timeout)
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Gateway":
        self._thread = threading.Thread(target=self._server.serve_forever, name="maskface-gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
