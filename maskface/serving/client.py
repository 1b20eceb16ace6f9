"""A Python client of the `maskface` ensemble (HTTP or gRPC through tritonclient).

    with MaskFaceClient("127.0.0.1:8000") as client:             # or "grpc://127.0.0.1:8001"
        faces = client.detect("photo.jpg")                        # path, encoded bytes or a BGR array
        faces["boxes"], faces["scores"], faces["landmarks"]      # [N, 4], [N], [N, K, 2], original pixels
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .repository import ENSEMBLE

PROTOCOLS = ("http", "grpc")
OUTPUTS = {"boxes": "BOXES", "scores": "SCORES", "landmarks": "LANDMARKS", "landmark_scores": "LANDMARK_SCORES"}


class ServingError(RuntimeError):
    """The server answered a request with an error (or could not be reached)."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


SCHEMES = {"http": ("http", False), "https": ("http", True), "grpc": ("grpc", False)}
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}  # Triton's


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str, bool]:
    """(host:port, protocol, ssl) from "host:port", "http://host:port", "https://..." or
    "grpc://host:port". The scheme picks the protocol; an explicit `protocol` must agree with it."""
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme.lower() not in SCHEMES:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use http://, https:// or grpc://")
        implied, ssl = SCHEMES[scheme.lower()]
        if protocol is not None and protocol != implied:
            raise ValueError(f"the URL {url!r} says {implied}, but the protocol asked for is {protocol}")
        protocol, address = implied, rest
    else:
        protocol, ssl, address = protocol or "http", False, url
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    address = address.rstrip("/")
    if not address or "/" in address:
        raise ValueError(f"expected host:port in {url!r} (e.g. 127.0.0.1:{DEFAULT_PORTS[protocol]})")
    return address, protocol, ssl


def keep_scores_at_least(faces: dict[str, np.ndarray], threshold: float | None) -> dict[str, np.ndarray]:
    """The faces with score >= threshold (None: all). The server's own threshold applied first."""
    if threshold is None:
        return faces
    keep = faces["scores"] >= threshold
    return {k: v[keep] for k, v in faces.items()}


def encode_image(image: Any) -> np.ndarray:
    """A path, encoded JPEG/PNG bytes or a BGR uint8 array [H, W, 3] (encoded as PNG, lossless)
    -> the ensemble's IMAGE input: uint8 [n]."""
    if isinstance(image, (str, os.PathLike)):
        return np.frombuffer(Path(image).read_bytes(), np.uint8)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(image), np.uint8)
    array = np.asarray(image)
    if array.dtype == np.uint8 and array.ndim == 1:
        return array
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        import cv2

        ok, buf = cv2.imencode(".png", array)
        if not ok:
            raise ValueError("could not encode the image as PNG")
        return buf.reshape(-1)
    raise ValueError(f"expected a path, encoded bytes or a BGR uint8 image [H, W, 3], got {array.dtype} {array.shape}")


class MaskFaceClient:
    """detect(image) -> dict(boxes [N, 4], scores [N], landmarks [N, K, 2], landmark_scores [N, K]).

    One client per thread (tritonclient's clients are not meant to be shared between threads).
    Errors answered by the server raise ServingError (its .status: "400" over HTTP,
    "StatusCode.INVALID_ARGUMENT" over gRPC for a bad request).
    """

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str | None = None, model_name: str = ENSEMBLE,
                 timeout: float = 60.0, verbose: bool = False):
        # protocol None: from the URL's scheme (grpc://, http://, https://), else http
        self.url, protocol, ssl = parse_url(url, protocol)
        self.protocol = protocol
        self.model_name = model_name
        self.timeout = float(timeout)
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(self.url, verbose=verbose, connection_timeout=self.timeout,
                                                        network_timeout=self.timeout, ssl=ssl)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(self.url, verbose=verbose)
        self._module = module
        from tritonclient.utils import InferenceServerException

        self._exception = InferenceServerException

    # ------------------------------------------------------------------ health

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._exception as exc:
            raise ServingError(exc.message() or str(exc), exc.status()) from None
        except (ConnectionError, OSError) as exc:
            raise ServingError(f"cannot reach {self.protocol}://{self.url}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. an HTTP parser fed a gRPC port's answer
            other = "grpc" if self.protocol == "http" else "http"
            raise ServingError(
                f"{self.protocol}://{self.url} did not answer as a Triton {self.protocol} endpoint "
                f"({type(exc).__name__}: {exc}); is it the {other} port? (Triton: HTTP {DEFAULT_PORTS['http']}, "
                f"gRPC {DEFAULT_PORTS['grpc']}; use {other}://{self.url} if so)") from None

    def is_live(self) -> bool:
        try:
            return bool(self._call(self._client.is_server_live))
        except ServingError:
            return False

    def is_ready(self) -> bool:
        try:
            return bool(self._call(self._client.is_server_ready)) and bool(
                self._call(self._client.is_model_ready, self.model_name))
        except ServingError:
            return False

    # ------------------------------------------------------------------ inference

    def infer_raw(self, data: np.ndarray, datatype: str | None = None,
                  input_name: str = "IMAGE") -> dict[str, np.ndarray]:
        """Send `data` as the IMAGE input as it is (any dtype/shape: the server validates)."""
        from tritonclient.utils import np_to_triton_dtype

        data = np.ascontiguousarray(data)
        inp = self._module.InferInput(input_name, list(data.shape), datatype or np_to_triton_dtype(data.dtype))
        if self.protocol == "http":
            inp.set_data_from_numpy(data, binary_data=True)
            outputs = [self._module.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS.values()]
            result = self._call(self._client.infer, self.model_name, [inp], outputs=outputs)
        else:
            inp.set_data_from_numpy(data)
            outputs = [self._module.InferRequestedOutput(name) for name in OUTPUTS.values()]
            result = self._call(self._client.infer, self.model_name, [inp], outputs=outputs,
                                client_timeout=self.timeout)
        out = {}
        for key, name in OUTPUTS.items():
            value = result.as_numpy(name)
            if value is None:
                raise ServingError(f"the response has no {name} output")
            out[key] = value
        k = out["landmarks"].shape[1] if out["landmarks"].ndim == 3 else 0
        out["boxes"] = out["boxes"].reshape(-1, 4).astype(np.float32, copy=False)
        out["scores"] = out["scores"].reshape(-1).astype(np.float32, copy=False)
        out["landmarks"] = out["landmarks"].reshape(-1, k, 2).astype(np.float32, copy=False)
        out["landmark_scores"] = out["landmark_scores"].reshape(-1, k).astype(np.float32, copy=False)
        return out

    def detect(self, image: Any, score_threshold: float | None = None) -> dict[str, np.ndarray]:
        """Faces of one image (path, encoded bytes or BGR array), in original image pixels;
        `score_threshold` keeps the faces scoring at least that (above the server's threshold)."""
        return keep_scores_at_least(self.infer_raw(encode_image(image), "UINT8"), score_threshold)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> "MaskFaceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_results(results: list[dict[str, Any]]) -> str:
    """Valid JSON, one line per face (not one number per line): a list of {"image", "faces"}."""
    blocks = []
    for entry in results:
        head = json.dumps({k: v for k, v in entry.items() if k != "faces"})[:-1]
        if "faces" not in entry:
            blocks.append(" " + head + "}")
            continue
        faces = ",\n".join("   " + json.dumps(face) for face in entry["faces"])
        blocks.append(" " + head + (', "faces": [\n' + faces + "\n ]}" if faces else ', "faces": []}'))
    return "[\n" + ",\n".join(blocks) + "\n]" if blocks else "[]"


def faces_to_json(faces: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One dict per face: box [x1, y1, x2, y2], score, landmarks [[x, y], ...], landmark_scores."""
    return [
        {"box": [round(float(v), 3) for v in faces["boxes"][i]], "score": round(float(faces["scores"][i]), 6),
         "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in faces["landmarks"][i]],
         "landmark_scores": [round(float(s), 6) for s in faces["landmark_scores"][i]]}
        for i in range(len(faces["scores"]))
    ]
