"""`maskface serve` and `maskface client`.

    maskface serve --target cpu --repo runs/triton_repo --onnx-dir artifacts/onnx [--precision fp32|int8|bf16]
    maskface serve --target tensorrt --repo runs/triton_repo --engines-dir artifacts/engines \\
        --plugin plugins/build/cmake/libmaskface_plugins.so
    maskface client photo.jpg other.png --url 127.0.0.1:8000 [--url grpc://127.0.0.1:8001] [--json]
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from ..contracts import PLUGIN_LIBRARY_ENV, PLUGIN_LIBRARY_NAME

ADMIN_KEY_ENV = "MASKFACE_ADMIN_KEY"
EXIT_STAGE_DIED = 3  # a stage died: the server was stopped so that an orchestrator restarts us


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="render the Triton model repository and run tritonserver on it",
                                  description="Render triton_models/ for a target and serve it with a real "
                                              "tritonserver (system install, else the one bundled in nvidia-pytriton).")
    serve.add_argument("--target", choices=("cpu", "tensorrt"), default="cpu",
                       help="cpu: ONNX Runtime in Python-backend stages; tensorrt: the engines on a GPU")
    serve.add_argument("--repo", required=True, help="model repository folder to render (and serve)")
    serve.add_argument("--onnx-dir", default="artifacts/onnx",
                       help="cpu: folder with detector.onnx + keypoint_head_portable.onnx (default %(default)s)")
    serve.add_argument("--precision", choices=("fp32", "int8", "bf16"), default="fp32",
                       help="cpu: fp32 (detector.onnx ... from --onnx-dir in ONNX Runtime), int8 (detector_int8.onnx "
                            "..., export/quantize_int8.py, in OpenVINO) or bf16 (detector.onnx ... in OpenVINO with "
                            "BF16, on CPUs with native BF16) (default %(default)s)")
    serve.add_argument("--engines-dir", default="artifacts/engines",
                       help="tensorrt: folder with detector.plan, keypoint_head.plan, engines.json "
                            "(default %(default)s)")
    serve.add_argument("--plugin", help=f"tensorrt: {PLUGIN_LIBRARY_NAME} (default ${PLUGIN_LIBRARY_ENV}, else plugins/build/**)")
    serve.add_argument("--no-render", action="store_true", help="serve --repo as it is")
    serve.add_argument("--render-only", action="store_true", help="render the repository and exit")
    serve.add_argument("--exit-after-ready", action="store_true", help="start, wait until ready, stop (a smoke test)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--http-port", type=int, default=8000, help="0 = a free port (default %(default)s)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="0 = a free port (default %(default)s)")
    serve.add_argument("--metrics-port", type=int, help="enable metrics on this port (default: off)")
    serve.add_argument("--tritonserver", help="tritonserver binary (default: system, else nvidia-pytriton's)")
    serve.add_argument("--ready-timeout", type=float, default=180.0,
                       help="seconds to wait for the server and every model to be ready")
    serve.add_argument("--gateway-port", type=int,
                       help="also serve the HTTP gateway on --gateway-host:PORT (0 = a free port): only the "
                            "maskface ensemble, bodies above the request limit refused before they are read, "
                            "request checks (maskface.serving.gateway); clients then use this port")
    serve.add_argument("--gateway-host", default="127.0.0.1", help="address of the gateway (default %(default)s)")
    serve.add_argument("--admin-key", default=os.environ.get(ADMIN_KEY_ENV),
                       help=f"value of the `maskface-admin-key` header that opens the restricted admin APIs "
                            f"(statistics, logging, shared memory, model repository, trace); default ${ADMIN_KEY_ENV}, "
                            "else a random key nobody knows (admin APIs closed)")
    serve.add_argument("--num-landmarks", type=int, help="K (default: read from the graphs / engines.json, else 5)")
    serve.add_argument("--score-threshold", type=float, help="faces kept score at least this (default: 0.5)")
    serve.add_argument("--nms-threshold", type=float, help="NMS IoU threshold (default: 0.4)")
    serve.add_argument("--max-detections", type=int, help="faces per image at most (default: 750)")
    serve.add_argument("--max-side", type=int, help="longer image side after resizing (0: no resize)")
    serve.add_argument("--max-image-pixels", type=int,
                       help="images with more pixels than this are refused before decoding (default: 64,000,000)")
    serve.add_argument("--max-request-bytes", type=int,
                       help="encoded images of more bytes than this are refused (default: 33,554,432 = 32 MiB)")
    serve.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="any other ServingParams field, e.g. detector_max_batch_size=8, preprocess_instances=4")
    serve.set_defaults(func=run_serve)

    client = subparsers.add_parser("client", help="send images to a running maskface ensemble",
                                   description="Detect faces with a running Triton `maskface` ensemble.")
    client.add_argument("images", nargs="+", help="JPEG/PNG files")
    client.add_argument("--url", help="host:port, http://host:port or grpc://host:port (the scheme picks the "
                        "protocol; default: 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)")
    client.add_argument("--protocol", choices=("http", "grpc"), default=None,
                        help="default: from the --url scheme, else http")
    client.add_argument("--model", default="maskface", help="model to call (the ensemble)")
    client.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    client.add_argument("--score-threshold", type=float, default=None,
                        help="keep faces scoring at least this (on top of the server's threshold; default: all)")
    client.add_argument("--json", action="store_true", help="print JSON (one line per face) instead of text")
    client.add_argument("--out", help="also write the JSON results to this file")
    client.set_defaults(func=run_client)


# ----------------------------------------------------------------------------- serve


def find_plugin_library(explicit: str | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(PLUGIN_LIBRARY_ENV):
        return Path(os.environ[PLUGIN_LIBRARY_ENV])
    root = Path(__file__).resolve().parents[2] / "plugins" / "build"
    built = sorted(root.glob(f"*/{PLUGIN_LIBRARY_NAME}"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = [root / "cmake" / PLUGIN_LIBRARY_NAME] + built
    return next((p for p in candidates if p.is_file()), None)


def _serving_params(args):
    from .repository import ServingParams

    fields = {f.name: f for f in dataclasses.fields(ServingParams)}
    values = {"precision": getattr(args, "precision", "fp32")}
    for key in ("score_threshold", "nms_threshold", "max_detections", "max_side", "max_image_pixels",
                "max_request_bytes"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    for item in args.param:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        default = getattr(ServingParams(), key)
        if isinstance(default, tuple):
            values[key] = tuple(float(v) for v in raw.replace(",", " ").split())
        elif isinstance(default, float):
            values[key] = float(raw)
        elif isinstance(default, str):
            values[key] = raw.strip()
        else:
            values[key] = int(raw)
    return ServingParams(**values)


def _start_gateway(args, server):
    from .gateway import Gateway
    from .repository import ServingParams, read_manifest

    limit = args.max_request_bytes or (read_manifest(args.repo) or {}).get("params", {}).get(
        "max_request_bytes", ServingParams().max_request_bytes)
    return Gateway(server.http_url, host=args.gateway_host, port=args.gateway_port, max_request_bytes=int(limit),
                   extra_ready=lambda: not server.dead_stubs()).start()


def run_serve(args) -> int:
    from .repository import render_repository
    from .server import ServerError, TritonServer

    plugin = None
    if args.target == "tensorrt":
        plugin = find_plugin_library(args.plugin)
        if (plugin is None or not plugin.is_file()) and not args.render_only:
            print(f"serve: the tensorrt target needs the MultiLevelRoIAlign plugin ({PLUGIN_LIBRARY_NAME}): pass --plugin "
                  f"or set ${PLUGIN_LIBRARY_ENV} (build it with plugins/binding.py build_plugin_library or CMake, "
                  "see plugins/README.md)", file=sys.stderr)
            return 2
    try:
        if not args.no_render:
            params = _serving_params(args)
            repo = render_repository(
                args.target, args.repo, onnx_dir=args.onnx_dir if args.target == "cpu" else None,
                engines_dir=args.engines_dir if args.target == "tensorrt" else None,
                num_landmarks=args.num_landmarks, plugin_library=plugin if plugin and plugin.is_file() else None,
                params=params)
            print(f"serve: rendered the {args.target} repository in {repo}")
        if args.render_only:
            return 0
        server = TritonServer(args.repo, http_port=args.http_port or None, grpc_port=args.grpc_port or None,
                              metrics_port=args.metrics_port, host=args.host, binary=args.tritonserver,
                              plugins=[plugin] if plugin is not None else (), ready_timeout=args.ready_timeout,
                              admin_key=args.admin_key)
    except (ValueError, FileNotFoundError, FileExistsError, ServerError) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2

    stop = {"signal": None}
    dead: list[str] = []
    gateway = None

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except ServerError as exc:
            print(f"serve: {exc}", file=sys.stderr)
            return 1
        print(f"serve: ready  http={server.http_url}  grpc={server.grpc_url}  model=maskface  pid={server.pid}  "
              f"log={server.log_path}  (Ctrl-C stops)", flush=True)
        if args.gateway_port is not None:
            gateway = _start_gateway(args, server)
            print(f"serve: gateway  http={gateway.url}  (only the maskface ensemble; request limit "
                  f"{gateway.max_request_bytes} bytes)", flush=True)
        if args.exit_after_ready:
            return 0
        while stop["signal"] is None:
            if not server.is_running():
                print(f"serve: tritonserver exited unexpectedly:\n{server.log_text(3000)}", file=sys.stderr)
                return 1
            dead = server.dead_stages()
            if dead:  # Triton would keep answering ready and fail every request: stop, exit non-zero
                print("serve: " + "; ".join(dead) + f" -- stopping tritonserver and exiting with code "
                      f"{EXIT_STAGE_DIED} so that the supervisor restarts the service", file=sys.stderr, flush=True)
                return EXIT_STAGE_DIED
            time.sleep(0.5)
        return 0
    finally:
        if gateway is not None:
            gateway.stop()
        report = server.stop(grace=server.dead_stage_grace if dead else None)
        print(f"serve: stopped (exit code {report.returncode}"
              + ("" if report.clean else f"; cleaned up: forced={report.forced}, "
                 f"processes={report.leftover_processes}, shm={report.leftover_shm}; log kept: {server.log_path}")
              + ")", flush=True)
        if report.clean:
            server.cleanup()
        for s, handler in previous.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------- client


def run_client(args) -> int:
    from .client import DEFAULT_PORTS, MaskFaceClient, ServingError, faces_to_json, format_results

    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol or 'http']}"
    results, failures = [], 0
    try:
        client = MaskFaceClient(url, args.protocol, args.model, timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001 - bad URL etc.
        print(f"client: {exc}", file=sys.stderr)
        return 2
    with client:
        for path in args.images:
            try:
                faces = client.detect(path, score_threshold=args.score_threshold)
            except (ServingError, OSError, ValueError) as exc:
                failures += 1
                print(f"client: {path}: {exc}", file=sys.stderr)
                results.append({"image": path, "error": str(exc)})
                continue
            entry = {"image": path, "faces": faces_to_json(faces)}
            results.append(entry)
            if not args.json:
                print(f"{path}: {len(entry['faces'])} face(s)")
                for face in entry["faces"]:
                    box = ", ".join(f"{v:.1f}" for v in face["box"])
                    points = " ".join(f"({x:.1f}, {y:.1f})" for x, y in face["landmarks"])
                    print(f"  score {face['score']:.3f}  box [{box}]  landmarks {points}")
    if args.json:
        print(format_results(results))
    if args.out:
        from ..io_utils import atomic_write_bytes

        atomic_write_bytes(Path(args.out), (format_results(results) + "\n").encode())
    return 1 if failures else 0
