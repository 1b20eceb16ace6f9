"""What the Triton cpu target adds to one request, and where: the served pipeline against the same
pipeline in process, interleaved, with Triton's own statistics of maskface_pipeline.

    python benchmarks/triton_overhead.py --onnx-dir artifacts/onnx [--requests 40] [--protocol http]

Renders the cpu target from --onnx-dir (fp32), starts tritonserver, and alternates, each after 50 ms
idle: one `maskface` request with a 640x480 JPEG of scikit-image's astronaut (client wall clock), and
OnnxPredictor on the same bytes in this process (same threads). Also reads, per request, Triton's
queue / compute statistics of maskface_pipeline and the CPU time of tritonserver and of each stub
(/proc), which tells the stub's own compute apart from the hand-offs around it.
Writes OUT/triton_overhead.json and .md (default OUT: artifacts/bench).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from maskface.io_utils import atomic_write_bytes, atomic_write_json

STATS = ("queue", "compute_input", "compute_infer", "compute_output")


def process_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of tritonserver and of each Python-backend stub, by model name."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in cmd if w]
        if words and words[0].endswith("triton_python_backend_stub") and len(words) > 1:
            key = "stub " + Path(words[1]).parts[-3]  # <repo>/<model>/<version>/model.py
        elif words and words[0].endswith("tritonserver"):
            key = "tritonserver"
        else:
            continue
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx-dir", required=True, help="detector.onnx + keypoint_head_portable.onnx")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="artifacts/bench")
    args = p.parse_args(argv)

    import cv2
    import skimage.data
    import tritonclient.http as http

    from maskface.preprocess import decode_image
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime
    from maskface.serving.client import MaskFaceClient
    from maskface.serving.repository import ServingParams, render_repository
    from maskface.serving.server import TritonServer

    image = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (640, 480))
    jpeg = np.frombuffer(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), np.uint8)
    onnx = Path(args.onnx_dir)
    local = OnnxPredictor(OrtRuntime(onnx / "detector.onnx", onnx / "keypoint_head_portable.onnx", args.threads),
                          max_side=None)
    out = Path(args.out)
    repo = render_repository("cpu", out / "triton_overhead_repo", onnx_dir=onnx,
                             params=ServingParams(max_side=0, cpu_threads=args.threads, preprocess_instances=1))
    server = TritonServer(repo)
    server.start()
    try:
        client = MaskFaceClient(server.grpc_url if args.protocol == "grpc" else server.http_url, args.protocol)
        stats_client = http.InferenceServerClient(server.http_url)

        def stats() -> dict:
            return stats_client.get_inference_statistics("maskface_pipeline", headers=server.admin_headers)[
                "model_stats"][0]["inference_stats"]

        for _ in range(3):  # warm-up: first-call allocations, both sides
            client.detect(jpeg)
            local(decode_image(jpeg))
        s0, c0 = stats(), process_cpu_seconds()
        served, in_process = [], []
        for _ in range(args.requests):
            time.sleep(0.05)
            t0 = time.perf_counter()
            client.detect(jpeg)
            served.append(time.perf_counter() - t0)
            time.sleep(0.05)
            t0 = time.perf_counter()
            local(decode_image(jpeg))
            in_process.append(time.perf_counter() - t0)
        s1, c1 = stats(), process_cpu_seconds()
    finally:
        server.stop()
        server.cleanup()
    n = args.requests
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "?"),
        "threads": args.threads, "requests": n, "protocol": args.protocol,
        "served_ms": {"median": float(np.median(served) * 1e3), "p90": float(np.percentile(served, 90) * 1e3)},
        "in_process_ms": {"median": float(np.median(in_process) * 1e3),
                          "p90": float(np.percentile(in_process, 90) * 1e3)},
        "ratio_of_medians": float(np.median(served) / np.median(in_process)),
        "maskface_pipeline_mean_ms": {k: (int(s1[k]["ns"]) - int(s0[k]["ns"])) / n / 1e6 for k in STATS},
        "cpu_ms_per_request": {k: (c1[k] - c0.get(k, 0.0)) / n * 1e3 for k in sorted(c1)},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "triton_overhead.json", result)
    lines = [f"# Triton cpu target vs in process ({result['cpu']}, {args.threads} threads, {n} requests, "
             f"{args.protocol})", "", f"`{result['command']}`, {result['created']}", "",
             "| | median ms | p90 ms |", "|---|---|---|",
             f"| served (`maskface` ensemble, client wall clock) | {result['served_ms']['median']:.1f} | "
             f"{result['served_ms']['p90']:.1f} |",
             f"| in process (OnnxPredictor) | {result['in_process_ms']['median']:.1f} | "
             f"{result['in_process_ms']['p90']:.1f} |",
             "", f"Ratio of medians: **{result['ratio_of_medians']:.3f}**", "",
             "Triton's statistics of maskface_pipeline (mean ms per request): " + ", ".join(
                 f"{k} {v:.2f}" for k, v in result["maskface_pipeline_mean_ms"].items()), "",
             "CPU ms per request (50 ms idle before each call included): " + ", ".join(
                 f"{k} {v:.1f}" for k, v in result["cpu_ms_per_request"].items()), ""]
    atomic_write_bytes(out / "triton_overhead.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
