"""Soak: clients hammer a real tritonserver (cpu target) and the gateway for a bounded time, 1 request in 5 hostile.

    python benchmarks/serving_soak.py                          # 8 clients, 600 s
    python benchmarks/serving_soak.py --duration 180 --out benchmarks/results

The script renders the cpu repository from a seeded narrow MobileNetV2 model (trainer.SMOKE_MODEL_OVERRIDES
widths; or --onnx-dir with exported graphs), starts `TritonServer` + `Gateway` itself (so that it can read the
server's memory), and runs --clients threads in a closed loop. Each worker sends good requests (scikit-image
photos as JPEG, round robin over HTTP direct, gRPC direct and HTTP through the gateway) and every
--hostile-every-th request a hostile one (image bombs, garbage, oversized bodies, direct sub-model calls beyond
the bounds, malformed JSON, admin and sub-model paths through the gateway; the list is HOSTILE below).

Checked: every good answer equals the in-process OnnxPredictor's (boxes/landmarks within 1e-3 px, scores 1e-5);
every hostile request is refused with the status its kind calls for (400, 404 or 413). Counted: wrong answers
(a good answer that differs; a hostile request accepted, or refused with another status), 500s, transport
errors. Memory: summed RSS of the server's process group (tritonserver + stubs) and the size of its
shared-memory regions after warm-up (start), every --sample-every seconds, and at the end.

Writes OUT/serving_soak.json and OUT/serving_soak.md (default OUT: artifacts/bench). Exit status 0 when there
was no wrong answer, no 500 and no transport error, and the server was still ready at the end; else 1.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np


from maskface.io_utils import atomic_write_bytes, atomic_write_json

PHOTOS = ("astronaut", "chelsea", "coffee")
PIXEL_TOL, SCORE_TOL = 1e-3, 1e-5
MB = 1 << 20


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default %(default)s)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--hostile-every", type=int, default=5, help="every N-th request of a client is hostile")
    p.add_argument("--onnx-dir", help="detector.onnx + keypoint_head_portable.onnx (default: export a seeded model)")
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--score-threshold", type=float, default=0.0,
                   help="0 keeps the --max-detections best candidates of the seeded (untrained) model, so every "
                        "good answer has faces to compare")
    p.add_argument("--max-detections", type=int, default=5)
    p.add_argument("--max-request-bytes", type=int, default=2 * MB)
    p.add_argument("--max-image-pixels", type=int, default=4_000_000)
    p.add_argument("--sample-every", type=float, default=15.0)
    p.add_argument("--skip", default="", help="comma-separated substrings of hostile kinds to leave out")
    p.add_argument("--out", default="artifacts/bench")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ setup


def export_seeded(out: Path) -> Path:
    import torch

    from export.export_onnx import export_all
    from maskface.config import get_config
    from maskface.engine.trainer import SMOKE_MODEL_OVERRIDES, apply_overrides
    from maskface.modeling.maskface import build_model

    cfg = apply_overrides(get_config("mbv2"), SMOKE_MODEL_OVERRIDES)
    cfg.backbone.weights = None
    torch.manual_seed(0)
    export_all(build_model(config=cfg).eval(), out)
    return out


def photos() -> dict[str, bytes]:
    import cv2
    import skimage.data

    return {name: cv2.imencode(".jpg", cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR))[1].tobytes()
            for name in PHOTOS}


def group_rss_mb(pgid: int) -> float:
    from maskface.serving.server import process_group_rss_mb

    return round(process_group_rss_mb(pgid), 1)


def per_process(server) -> dict[str, dict[str, float]]:
    """RSS and shared-memory region (MB) of tritonserver and of each stage's stub (argv: stub, model.py, region)."""
    from maskface.serving.server import _process_group_members

    out = {}
    for pid in _process_group_members(server.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        if pid == server.pid:
            out["tritonserver"] = {"rss_mb": round(rss / 1024, 1)}
            continue
        name = Path(argv[1].decode()).parents[1].name if len(argv) > 2 else str(pid)
        region = Path("/dev/shm") / argv[2].decode()
        out[name] = {"rss_mb": round(rss / 1024, 1),
                     "shm_mb": round(region.stat().st_size / MB, 1) if region.exists() else None}
    return dict(sorted(out.items()))


def shm_mb(server) -> float:
    return round(sum(os.path.getsize(f"/dev/shm/{n}") for n in server.shm_segments()) / MB, 1)


# ------------------------------------------------------------------------------------------------ requests


def status_of(exc: BaseException) -> str:
    """'400', '404', '413', '500', ... from a client exception (gRPC codes mapped to HTTP ones)."""
    raw = getattr(exc, "status", None)
    raw = raw() if callable(raw) else raw
    grpc = {"StatusCode.INVALID_ARGUMENT": "400", "StatusCode.INTERNAL": "500", "StatusCode.NOT_FOUND": "404",
            "StatusCode.UNAVAILABLE": "503", "StatusCode.UNKNOWN": "500"}
    return grpc.get(str(raw), str(raw) if raw is not None else "transport")


class Worker:
    """One client thread's connections: Triton over HTTP and gRPC, and the gateway."""

    def __init__(self, server, gateway):
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        from maskface.serving.client import MaskFaceClient

        self.server, self.gateway = server, gateway
        self.routes = {"http": MaskFaceClient(server.http_url, "http", timeout=120),
                       "grpc": MaskFaceClient(server.grpc_url, "grpc", timeout=120),
                       "gateway": MaskFaceClient(gateway.url, "http", timeout=120)}
        self.raw = {"http": httpclient.InferenceServerClient(server.http_url, network_timeout=120),
                    "grpc": grpcclient.InferenceServerClient(server.grpc_url)}
        self.modules = {"http": httpclient, "grpc": grpcclient}

    def close(self):
        for c in [*self.routes.values(), *self.raw.values()]:
            c.close()

    def submodel(self, protocol: str, model: str, inputs: dict[str, np.ndarray], output: str):
        from tritonclient.utils import np_to_triton_dtype

        m = self.modules[protocol]
        tensors = []
        for name, array in inputs.items():
            t = m.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(t)
        return self.raw[protocol].infer(model, tensors, outputs=[m.InferRequestedOutput(output)])

    def gateway_post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> str:
        conn = http.client.HTTPConnection(self.gateway.host, self.gateway.port, timeout=60)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            response.read()
            return str(response.status)
        finally:
            conn.close()

    def gateway_claim(self, size: int) -> str:
        """Headers announcing `size` bytes (Expect: 100-continue), no body: the answer comes from the headers."""
        conn = http.client.HTTPConnection(self.gateway.host, self.gateway.port, timeout=60)
        try:
            conn.putrequest("POST", "/v2/models/maskface/infer")
            for k, v in (("Content-Length", str(size)), ("Inference-Header-Content-Length", "128"),
                         ("Expect", "100-continue")):
                conn.putheader(k, v)
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            return str(response.status)
        finally:
            conn.close()


def hostile_requests(args, features: dict[str, np.ndarray]) -> list[tuple[str, str, Callable[[Worker], Any]]]:
    """(kind, expected status, call). A call returns normally when the server ACCEPTED the request."""
    import cv2

    bomb = np.zeros((6000, 6000, 3), np.uint8)
    webp = cv2.imencode(".webp", bomb, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].reshape(-1)
    tiff = cv2.imencode(".tiff", bomb)[1].reshape(-1)
    del bomb
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    png_bomb = np.frombuffer(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                             + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)), np.uint8)
    garbage = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint8)
    too_big = np.zeros(args.max_request_bytes + 1, np.uint8)
    roi = np.float32([0, 10, 20, 60, 90])
    post = {"rois": np.float32([[0, 10, 20, 60, 90]]), "det_scores": np.float32([0.9]),
            "landmarks": np.zeros((1, 5, 2), np.float32), "landmark_scores": np.zeros((1, 5), np.float32),
            "scale_xy": np.float64([np.nan, 0.5]), "original_size": np.int32([300, 384])}
    infer = "/v2/models/maskface/infer"

    def image_json(shape, data):
        return json.dumps({"inputs": [{"name": "IMAGE", "shape": shape, "datatype": "UINT8", "data": data}]}).encode()

    return [
        ("webp bomb 6000^2 (http)", "400", lambda w: w.routes["http"].infer_raw(webp, "UINT8")),
        ("tiff bomb 6000^2 (grpc)", "400", lambda w: w.routes["grpc"].infer_raw(tiff, "UINT8")),
        ("png header 60000^2 (gateway)", "400", lambda w: w.routes["gateway"].infer_raw(png_bomb, "UINT8")),
        ("random bytes (grpc)", "400", lambda w: w.routes["grpc"].infer_raw(garbage, "UINT8")),
        ("body over max_request_bytes (http)", "400", lambda w: w.routes["http"].infer_raw(too_big, "UINT8")),
        ("IMAGE as FP32 (grpc)", "400", lambda w: w.routes["grpc"].infer_raw(np.zeros(64, np.float32))),
        ("keypoints 10,000 rois (http)", "400",
         lambda w: w.submodel("http", "maskface_keypoints", {**features, "rois": np.tile(roi, (10_000, 1))},
                              "landmarks")),
        ("detector 1280^2 (grpc)", "400",
         lambda w: w.submodel("grpc", "maskface_detector", {"images": np.zeros((1, 3, 1280, 1280), np.float32)},
                              "scores")),
        ("postprocess scale_xy NaN (http)", "400", lambda w: w.submodel("http", "maskface_postprocess", post, "BOXES")),
        ("malformed JSON (gateway)", "400", lambda w: w.gateway_post(infer, b'{"inputs": [')),
        ("shape [-1] (gateway)", "400", lambda w: w.gateway_post(infer, image_json([-1], [1, 2, 3]))),
        ("UINT8 value 300 (gateway)", "400", lambda w: w.gateway_post(infer, image_json([3], [300, 2, 3]))),
        ("300 MB body announced (gateway)", "413", lambda w: w.gateway_claim(300 * MB)),
        ("sub-model via gateway", "404", lambda w: w.gateway_post("/v2/models/maskface_keypoints/infer", b"{}")),
        ("log settings via gateway", "404", lambda w: w.gateway_post("/v2/logging", b'{"log_verbose_level": 1}')),
    ]


def mismatch(got: dict, ref: dict) -> str | None:
    for key in ("boxes", "scores", "landmarks", "landmark_scores"):
        if got[key].shape != ref[key].shape:
            return f"{key}: shape {got[key].shape} != {ref[key].shape}"
    for key, tol in (("boxes", PIXEL_TOL), ("landmarks", PIXEL_TOL), ("scores", SCORE_TOL),
                     ("landmark_scores", SCORE_TOL)):
        if got[key].size and float(np.abs(got[key] - ref[key]).max()) > tol:
            return f"{key}: max abs diff {float(np.abs(got[key] - ref[key]).max()):.3g} > {tol}"
    return None


# ------------------------------------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from maskface.config import InferenceConfig
    from maskface.preprocess import decode_image
    from maskface.serving.gateway import Gateway
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime
    from maskface.serving.repository import ServingParams, render_repository
    from maskface.serving.server import TritonServer

    work = Path(tempfile.mkdtemp(prefix="maskface-soak-"))
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else export_seeded(work / "onnx")
    inference = InferenceConfig(score_threshold=args.score_threshold, max_detections=args.max_detections)
    params = ServingParams.from_configs(inference, max_side=args.max_side, max_image_pixels=args.max_image_pixels,
                                        max_request_bytes=args.max_request_bytes)
    repo = render_repository("cpu", work / "repo", onnx_dir=onnx_dir, params=params)
    images = photos()
    predictor = OnnxPredictor(OrtRuntime(onnx_dir / "detector.onnx", onnx_dir / "keypoint_head_portable.onnx"),
                              inference, max_side=args.max_side)
    reference = {name: predictor(decode_image(data)) for name, data in images.items()}
    print("soak: reference faces per photo: " + ", ".join(f"{k} {len(v['scores'])}" for k, v in reference.items()),
          flush=True)

    server = TritonServer(repo)
    server.start()
    gateway = Gateway(server.http_url, max_request_bytes=args.max_request_bytes,
                      extra_ready=lambda: not server.dead_stubs()).start()
    try:
        warm = Worker(server, gateway)
        side = -(-args.max_side // 64) * 64
        features = {k: v for k, v in zip(
            [f"m{i}" for i in range(2, 7)],
            [warm.submodel("http", "maskface_detector", {"images": np.zeros((1, 3, side, side), np.float32)},
                           f"m{i}").as_numpy(f"m{i}") for i in range(2, 7)])}
        for name, data in images.items():  # warm-up: every route once per photo
            for route in warm.routes.values():
                route.detect(data)
        warm.close()
        skip = [k.strip() for k in args.skip.split(",") if k.strip()]
        hostile = [h for h in hostile_requests(args, features) if not any(k in h[0] for k in skip)]
        start_rss, start_shm, start_processes = group_rss_mb(server.pid), shm_mb(server), per_process(server)
        print(f"soak: {args.clients} clients for {args.duration:.0f} s, 1 request in {args.hostile_every} hostile "
              f"({len(hostile)} kinds); server RSS {start_rss} MB, shm {start_shm} MB", flush=True)

        lock = threading.Lock()
        kinds = {k: {"sent": 0, "refused_as_expected": 0} for k, _, _ in hostile}
        stats: dict[str, Any] = {"good": 0, "hostile": 0, "wrong": [], "status_500": [], "transport": [],
                                 "latency_ms": [], "kinds": kinds}
        hostile_turn = itertools.count()
        good_turn = itertools.count()
        stop_at = time.monotonic() + args.duration
        samples = [{"t_s": 0.0, "rss_mb": start_rss, "shm_mb": start_shm}]
        t0 = time.monotonic()

        def note(key: str, message: str) -> None:
            with lock:
                stats[key].append(message)

        def worker(index: int) -> None:
            w = Worker(server, gateway)
            try:
                for i in itertools.count():
                    if time.monotonic() >= stop_at:
                        return
                    if i % args.hostile_every == args.hostile_every - 1:
                        kind, expected, call = hostile[next(hostile_turn) % len(hostile)]
                        try:
                            result = call(w)
                            status = result if isinstance(result, str) else "200"
                        except Exception as exc:  # noqa: BLE001 - classified below
                            status = status_of(exc)
                        with lock:
                            stats["hostile"] += 1
                            stats["kinds"][kind]["sent"] += 1
                            stats["kinds"][kind]["refused_as_expected"] += status == expected
                        if status == "500":
                            note("status_500", f"{kind}: 500")
                        elif status == "transport":
                            note("transport", kind)
                        elif status != expected:
                            note("wrong", f"{kind}: {status}, expected {expected}")
                        continue
                    n = next(good_turn)
                    name = PHOTOS[n % len(PHOTOS)]
                    route = ("http", "grpc", "gateway")[(n // len(PHOTOS)) % 3]
                    start = time.perf_counter()
                    try:
                        got = w.routes[route].detect(images[name])
                    except Exception as exc:  # noqa: BLE001
                        status = status_of(exc)
                        note("status_500" if status == "500" else "transport" if status == "transport" else "wrong",
                             f"good {name} via {route}: {status} {exc}"[:300])
                        continue
                    elapsed = (time.perf_counter() - start) * 1e3
                    why = mismatch(got, reference[name])
                    with lock:
                        stats["good"] += 1
                        stats["latency_ms"].append(elapsed)
                    if why:
                        note("wrong", f"good {name} via {route}: {why}")
            finally:
                w.close()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(args.sample_every, max(0.5, stop_at - time.monotonic())))
            finished = not any(t.is_alive() for t in threads)
            if time.monotonic() - t0 - samples[-1]["t_s"] >= args.sample_every or finished:
                samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": group_rss_mb(server.pid),
                                "shm_mb": shm_mb(server)})
                print(f"soak: t={samples[-1]['t_s']:.0f} s  good {stats['good']}  hostile {stats['hostile']}  "
                      f"wrong {len(stats['wrong'])}  500s {len(stats['status_500'])}  RSS {samples[-1]['rss_mb']} MB  "
                      f"shm {samples[-1]['shm_mb']} MB", flush=True)
        wall = time.monotonic() - t0
        end_rss, end_shm, end_processes = group_rss_mb(server.pid), shm_mb(server), per_process(server)
        ready, dead = server.is_ready(), server.dead_stages()
    finally:
        gateway.stop()
        stop = server.stop()
        server.cleanup()

    lat = np.array(stats["latency_ms"]) if stats["latency_ms"] else np.zeros(1)
    report = {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/serving_soak.py "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "settings": {k: v for k, v in vars(args).items()},
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "wall_s": round(wall, 1),
        "requests": {"good": stats["good"], "hostile": stats["hostile"], "total": stats["good"] + stats["hostile"]},
        "wrong_answers": len(stats["wrong"]), "status_500": len(stats["status_500"]),
        "transport_errors": len(stats["transport"]),
        "examples": {k: stats[k][:10] for k in ("wrong", "status_500", "transport")},
        "good_latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 1) for q in ("p50", "p99")},
        "hostile_kinds": stats["kinds"],
        "memory": {"rss_start_mb": start_rss, "rss_end_mb": end_rss, "shm_start_mb": start_shm, "shm_end_mb": end_shm,
                   "samples": samples, "processes_start": start_processes, "processes_end": end_processes},
        "ready_at_end": ready, "dead_stages_at_end": dead,
        "stop": {"returncode": stop.returncode, "clean": stop.clean},
        "reference_faces": {k: int(len(v["scores"])) for k, v in reference.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "serving_soak.json", report)
    md = to_markdown(report)
    atomic_write_bytes(out / "serving_soak.md", md.encode())
    print(md)
    ok = not (report["wrong_answers"] or report["status_500"] or report["transport_errors"]) and ready
    return 0 if ok else 1


def to_markdown(r: dict[str, Any]) -> str:
    m, q = r["memory"], r["requests"]
    lines = [
        "# Serving soak",
        "",
        f"`{r['command']}` — {r['created']}, {r['machine']['cpus']} CPUs, cpu target (ONNX Runtime), "
        f"{r['settings']['clients']} clients, {r['wall_s']} s, 1 request in {r['settings']['hostile_every']} hostile.",
        "",
        "| requests | good | hostile | wrong answers | 500s | transport errors | ready at the end |",
        "|---|---|---|---|---|---|---|",
        f"| {q['total']} | {q['good']} | {q['hostile']} | {r['wrong_answers']} | {r['status_500']} | "
        f"{r['transport_errors']} | {r['ready_at_end']} |",
        "",
        f"Good requests: p50 {r['good_latency_ms']['p50']} ms, p99 {r['good_latency_ms']['p99']} ms (client side, "
        "under the hostile load). Reference faces per photo: "
        + ", ".join(f"{k} {v}" for k, v in r["reference_faces"].items()) + ".",
        "",
        f"Server memory (tritonserver + stubs, summed RSS): **{m['rss_start_mb']} MB at the start, "
        f"{m['rss_end_mb']} MB at the end**; Python-backend shared memory {m['shm_start_mb']} -> {m['shm_end_mb']} MB.",
        "",
        "| hostile kind | sent | refused as expected |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['sent']} | {v['refused_as_expected']} |" for k, v in r["hostile_kinds"].items()]
    lines += ["", "| process | RSS start (MB) | RSS end (MB) | shm region start (MB) | shm region end (MB) |",
              "|---|---|---|---|---|"]
    for name, end in m["processes_end"].items():
        start = m["processes_start"].get(name, {})
        lines.append(f"| {name} | {start.get('rss_mb')} | {end['rss_mb']} | {start.get('shm_mb', '')} | "
                     f"{end.get('shm_mb', '')} |")
    lines += ["", "| t (s) | RSS (MB) | shm (MB) |", "|---|---|---|"]
    lines += [f"| {s['t_s']} | {s['rss_mb']} | {s['shm_mb']} |" for s in m["samples"]]
    for key in ("wrong", "status_500", "transport"):
        if r["examples"][key]:
            lines += ["", f"{key}: " + "; ".join(r["examples"][key])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
