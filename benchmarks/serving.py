"""Closed-loop load on the Triton ensemble `maskface`: throughput and latency percentiles per concurrency.

    python benchmarks/serving.py --url 127.0.0.1:8000                       # HTTP, concurrency 1,2,4,8
    python benchmarks/serving.py --url grpc://127.0.0.1:8001 --concurrency 1,4 --requests 400 --duration 60

Each concurrency level C runs C client threads (one client connection each). A thread sends a request,
waits for its response, and immediately sends the next (closed loop), so C requests are in flight at all
times. A level ends when --requests requests have been sent or --duration seconds have passed (whichever
comes first; requests in flight then complete). Requests are real JPEG files: scikit-image's sample photos
(astronaut, camera, coffee, chelsea, rocket) or --images, sent round robin as input IMAGE (UINT8, the encoded
bytes) through the project's client (maskface.serving.client.MaskFaceClient); the outputs BOXES, SCORES and
LANDMARKS are checked against each other (a bad response counts as a failure).

Latency = wall clock from sending a request to having its decoded response, on the client (so it includes
serialisation and the network stack). Throughput = successful responses / wall time of the level.
Writes OUT/serving.json, OUT/serving.md and OUT/serving.png (default OUT: artifacts/bench).
Exit status: 0 when every level has at least one successful response and no errors, 1 when some requests
failed, 2 when the server or the model is not reachable / not ready.
"""
from __future__ import annotations

import argparse
import glob
import platform
import shlex
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from maskface.io_utils import atomic_write_bytes, atomic_write_json

MODEL = "maskface"
INPUT = "IMAGE"
OUTPUTS = ("BOXES", "SCORES", "LANDMARKS")
SAMPLE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")
MAX_ERRORS_KEPT = 5


# ------------------------------------------------------------------------------------------------ arguments


def parse_url(url: str, protocol: str | None) -> tuple[str, str]:
    """('host:port', protocol) from 'host:port', 'http://host:port' or 'grpc://host:port'."""
    text = url.strip()
    scheme = None
    if "://" in text:
        parsed = urlparse(text)
        scheme = parsed.scheme.lower()
        if scheme not in ("http", "grpc"):
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (http:// or grpc://; https is not supported)")
        if parsed.path not in ("", "/"):
            raise ValueError(f"the URL must be host:port, without a path: {url!r}")
        text = parsed.netloc
    if not text or ":" not in text:
        raise ValueError(f"the URL must name host:port, got {url!r}")
    if protocol and scheme and protocol != scheme:
        raise ValueError(f"--protocol {protocol} contradicts the URL scheme {scheme}://")
    return text, (protocol or scheme or "http")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="Triton endpoint host:port (or http://host:port, grpc://host:port)")
    p.add_argument("--protocol", choices=("http", "grpc"), default=None, help="default: the URL's scheme, else http")
    p.add_argument("--model", default=MODEL, help=f"ensemble name (default {MODEL})")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma list of concurrency levels (default 1,2,4,8)")
    p.add_argument("--requests", type=int, default=200, help="requests per level at most (default 200)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per level at most (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before the first level (default 3)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request before it counts as failed")
    p.add_argument("--images", default=None, help="glob or comma list of JPEG/PNG files (default: scikit-image photos)")
    p.add_argument("--out", default="artifacts/bench", help="folder of serving.json/.md/.png")
    args = p.parse_args(argv)
    try:
        args.address, args.protocol = parse_url(args.url, args.protocol)
    except ValueError as exc:
        p.error(str(exc))
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        p.error(f"--concurrency must be a comma list of integers, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1 or max(args.concurrency) > 256:
        p.error("--concurrency values must be in 1..256")
    if args.requests < 1 or args.duration <= 0 or args.warmup < 0 or args.timeout <= 0:
        p.error("--requests >= 1, --duration > 0, --warmup >= 0 and --timeout > 0 are required")
    return args


# ------------------------------------------------------------------------------------------------ requests


def sample_jpegs(spec: str | None = None, quality: int = 90) -> list[dict[str, Any]]:
    """[{name, bytes, width, height}] of real photos, encoded as JPEG (files given by `spec` are sent as is)."""
    import cv2

    items: list[dict[str, Any]] = []
    if spec:
        paths = [Path(p) for part in spec.split(",") for p in sorted(glob.glob(part.strip()))]
        if not paths:
            raise FileNotFoundError(f"no image matches {spec!r}")
        for path in paths:
            data = path.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path} is not a readable image")
            items.append({"name": path.name, "bytes": data, "width": image.shape[1], "height": image.shape[0]})
        return items
    from skimage import data as skdata

    for name in SAMPLE_PHOTOS:
        try:
            rgb = getattr(skdata, name)()
        except Exception:  # a sample that needs a download (pooch) or is missing in this version
            continue
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, axis=-1)
        bgr = np.ascontiguousarray(rgb[:, :, 2::-1]).astype(np.uint8)
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            items.append({"name": f"{name}.jpg", "bytes": enc.tobytes(), "width": bgr.shape[1], "height": bgr.shape[0]})
    if not items:
        raise RuntimeError("no scikit-image sample photo could be loaded; pass --images")
    return items


def make_client(args: argparse.Namespace):
    """One connection: the project's client (maskface.serving.client.MaskFaceClient, tritonclient inside)."""
    from maskface.serving.client import MaskFaceClient

    return MaskFaceClient(args.address, args.protocol, model_name=args.model, timeout=args.timeout)


def check_response(faces: dict[str, np.ndarray]) -> int:
    """Number of faces in a response; raises ValueError when boxes / scores / landmarks disagree."""
    for key in ("boxes", "scores", "landmarks"):
        if faces.get(key) is None:
            raise ValueError(f"{key} missing from the response")
    boxes, scores, landmarks = faces["boxes"], faces["scores"], faces["landmarks"]
    n = scores.size
    if boxes.size != 4 * n or boxes.shape[-1] != 4:
        raise ValueError(f"BOXES {boxes.shape} does not match SCORES {scores.shape}")
    if landmarks.shape[-1] != 2 or (n and landmarks.size % n) or (not n and landmarks.size):
        raise ValueError(f"LANDMARKS {landmarks.shape} does not match SCORES {scores.shape}")
    return int(n)


def server_facts(address: str, protocol: str, model: str, timeout: float) -> dict[str, Any]:
    """Liveness, readiness, versions and the IMAGE input (tritonclient directly: the project's client has no
    metadata call); raises ConnectionError with the reason when the server or the model cannot serve."""
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(address)
        timeouts: dict[str, Any] = {"client_timeout": timeout}
        kwargs: dict[str, Any] = {"as_json": True, **timeouts}
    else:
        import tritonclient.http as module

        client = module.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
        timeouts = kwargs = {}
    try:
        try:
            live = client.is_server_live(**timeouts)
        except Exception as exc:
            raise ConnectionError(f"no Triton server answers at {address} ({protocol}): {exc}") from exc
        if not live:
            raise ConnectionError(f"the Triton server at {address} is not live")
        if not client.is_model_ready(model, **timeouts):
            raise ConnectionError(f"model {model!r} is not ready on the Triton server at {address}")
        meta = client.get_model_metadata(model, **kwargs)
        server = client.get_server_metadata(**kwargs)
    finally:
        client.close()
    inputs = {i["name"]: i for i in meta.get("inputs", [])}
    if INPUT not in inputs:
        raise ConnectionError(f"model {model!r} has no input {INPUT} (inputs: {sorted(inputs)})")
    shape = [int(d) for d in inputs[INPUT].get("shape", [])]
    if shape != [-1]:
        raise ConnectionError(f"model {model!r}: input {INPUT} has shape {shape}, the contract is [-1] (encoded bytes)")
    outputs = [o["name"] for o in meta.get("outputs", [])]
    missing = [o for o in OUTPUTS if o not in outputs]
    if missing:
        raise ConnectionError(f"model {model!r} lacks outputs {missing} (outputs: {outputs})")
    return {"server_version": server.get("version"), "model_versions": meta.get("versions"),
            "input_shape": shape, "input_datatype": inputs[INPUT].get("datatype"), "outputs": outputs}


# ------------------------------------------------------------------------------------------------ load


def percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    a = np.asarray(ms, np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


def run_level(args: argparse.Namespace, facts: dict[str, Any], images: list[dict[str, Any]],
              concurrency: int) -> dict[str, Any]:
    lock = threading.Lock()
    state = {"sent": 0}
    latencies: list[float] = []
    faces: list[int] = []
    errors: list[str] = []
    error_count = [0]
    start = time.perf_counter()
    deadline = start + args.duration
    ends: list[float] = []

    def worker(index: int) -> None:
        try:
            client = make_client(args)
        except Exception as exc:
            with lock:
                error_count[0] += 1
                errors.append(f"client {index}: {type(exc).__name__}: {exc}")
            return
        try:
            while True:
                with lock:
                    if state["sent"] >= args.requests or time.perf_counter() >= deadline:
                        break
                    seq = state["sent"]
                    state["sent"] += 1
                image = images[seq % len(images)]
                t0 = time.perf_counter()
                try:
                    n = check_response(client.detect(image["bytes"]))
                    ok, msg = True, ""
                except Exception as exc:
                    ok, msg = False, f"{image['name']}: {type(exc).__name__}: {str(exc)[:300]}"
                t1 = time.perf_counter()
                with lock:
                    ends.append(t1)
                    if ok:
                        latencies.append((t1 - t0) * 1e3)
                        faces.append(n)
                    else:
                        error_count[0] += 1
                        if len(errors) < MAX_ERRORS_KEPT:
                            errors.append(msg)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        # Bounded: every request has its own timeout, so a worker ends within duration + timeout.
        t.join(timeout=args.duration + args.timeout + 10)
    hung = sum(t.is_alive() for t in threads)
    wall = (max(ends) if ends else time.perf_counter()) - start
    return {
        "concurrency": concurrency, "requests_sent": state["sent"], "succeeded": len(latencies),
        "failed": error_count[0], "hung_workers": hung, "wall_s": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 and latencies else 0.0,
        "latency_ms": percentiles(latencies), "faces_per_response_mean": float(np.mean(faces)) if faces else None,
        "errors": errors,
    }


# ------------------------------------------------------------------------------------------------ reports


def to_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    f = report["server"]
    lines = [
        "# MaskFace serving load (benchmarks/serving.py)",
        "",
        f"- Server: Triton {f.get('server_version')} at `{s['address']}` ({s['protocol']}), ensemble `{s['model']}`, "
        f"IMAGE shape {f.get('input_shape')}",
        f"- Client host: {report['client']['host']} ({report['client']['cpu']}); closed loop, one connection per "
        "concurrent client",
        f"- Per level: at most {s['requests']} requests or {s['duration_s']} s; {s['warmup']} warm-up requests first; "
        f"request timeout {s['timeout_s']} s",
        f"- Requests: {len(report['images'])} real JPEGs round robin ("
        + ", ".join(f"{i['name']} {i['width']}x{i['height']} {i['bytes'] / 1024:.0f} KiB" for i in report["images"]) + ")",
        "- Latency = client wall clock from send to decoded response (ms)",
        f"- Created {report['created']} by `{report['command']}`",
        "",
        "| concurrency | requests | ok | failed | throughput (req/s) | p50 ms | p90 ms | p99 ms | mean faces |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(v):
        return "n/a" if v is None else f"{v:.1f}"

    for lv in report["levels"]:
        lat = lv["latency_ms"]
        faces = "n/a" if lv["faces_per_response_mean"] is None else f"{lv['faces_per_response_mean']:.1f}"
        lines.append(f"| {lv['concurrency']} | {lv['requests_sent']} | {lv['succeeded']} | {lv['failed']} | "
                     f"{lv['throughput_rps']:.2f} | {ms(lat['p50'])} | {ms(lat['p90'])} | {ms(lat['p99'])} | {faces} |")
    errs = [(lv["concurrency"], e) for lv in report["levels"] for e in lv["errors"]]
    if errs:
        lines += ["", "## Errors (first few per level)", ""] + [f"- concurrency {c}: {e}" for c, e in errs]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = report["levels"]
    cs = [lv["concurrency"] for lv in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(cs, [lv["throughput_rps"] for lv in levels], marker="o")
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("throughput (requests / s)")
    ax1.set_title("Throughput")
    for key in ("p50", "p90", "p99"):
        ys = [lv["latency_ms"][key] if lv["latency_ms"][key] is not None else np.nan for lv in levels]
        ax2.plot(cs, ys, marker="o", label=key)
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency percentiles")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
        ax.set_ylim(bottom=0)  # from 0, so that the curves' heights compare honestly
        ax.grid(alpha=0.3)
    s = report["settings"]
    fig.suptitle(f"Triton ensemble '{s['model']}' at {s['address']} ({s['protocol']}), "
                 f"Triton {report['server'].get('server_version')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        facts = server_facts(args.address, args.protocol, args.model, args.timeout)
    except ConnectionError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 2
    images = sample_jpegs(args.images)
    print(f"serving: Triton {facts['server_version']} at {args.address} ({args.protocol}), model {args.model}, "
          f"IMAGE {facts['input_shape']}; {len(images)} JPEGs; levels {args.concurrency}", flush=True)

    if args.warmup:
        client = make_client(args)
        try:
            for i in range(args.warmup):
                try:
                    check_response(client.detect(images[i % len(images)]["bytes"]))
                except Exception as exc:
                    print(f"serving: warm-up request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            client.close()

    try:
        from tqdm import tqdm

        bar = tqdm(args.concurrency, unit="level", file=sys.stderr)
    except ImportError:
        bar = args.concurrency
    levels = []
    for c in bar:
        if hasattr(bar, "set_description"):
            bar.set_description(f"concurrency {c}")
        level = run_level(args, facts, images, c)
        levels.append(level)
        lat = level["latency_ms"]
        msg = (f"serving: concurrency {c}: {level['succeeded']} ok, {level['failed']} failed, "
               f"{level['throughput_rps']:.2f} req/s, p50 {lat['p50'] or float('nan'):.1f} ms, "
               f"p99 {lat['p99'] or float('nan'):.1f} ms")
        (bar.write if hasattr(bar, "write") else print)(msg)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/serving.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "settings": {"address": args.address, "protocol": args.protocol, "model": args.model,
                     "concurrency": args.concurrency, "requests": args.requests, "duration_s": args.duration,
                     "warmup": args.warmup, "timeout_s": args.timeout},
        "server": facts,
        "client": {"host": platform.node(), "cpu": _cpu_name(), "python": platform.python_version()},
        "images": [{k: (len(v) if k == "bytes" else v) for k, v in i.items()} for i in images],
        "levels": levels,
    }
    atomic_write_json(out / "serving.json", report)
    md = to_markdown(report)
    atomic_write_bytes(out / "serving.md", md.encode())
    plotted = plot(report, out / "serving.png")
    print(md)
    print(f"serving: wrote {out / 'serving.json'}, {out / 'serving.md'}" + (f", {out / 'serving.png'}" if plotted else ""))
    bad = any(lv["failed"] or lv["hung_workers"] or not lv["succeeded"] for lv in levels)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
