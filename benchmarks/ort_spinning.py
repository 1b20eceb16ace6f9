"""What ONNX Runtime's spin-waiting after a run costs the in-process CPU pipelines (issue #15).

    python benchmarks/ort_spinning.py --onnx-dir artifacts/onnx --int8-dir artifacts/onnx_int8 [--rounds 30]

ONNX Runtime's intra-op workers spin-wait between the parallel sections of a run, and by default go on
spinning for a while after it returns. maskface.runtimes.ort_runtime.ort_session stops them when the
run returns (session.force_spinning_stop). This compares, per CPU path, the whole pipeline (JPEG of
scikit-image's astronaut at 640x480, decode to faces) with the ONNX Runtime sessions spinning on
(ONNX Runtime's default) against stopped, in two arrivals:

* back to back: a request right after the previous one returned (a stream at concurrency 1);
* after idle: a request 50 ms after the previous one (latency.py's pipeline column).

Paths: fp32 (both graphs in ONNX Runtime), and where OpenVINO and the graphs are there int8 / bf16
(OpenVINO detector, ONNX Runtime keypoint head). Each round runs every (path, variant) once in a
rotating order, each after 150 ms of quiet, and times the second of two requests; the table gives
the medians and the median of per-round ratios stopped / spinning with a 90 % bootstrap interval.
Writes OUT/ort_spinning.json and .md (default OUT: artifacts/bench).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.latency import encode_jpeg, sample_image
from benchmarks.latency_report import paired_ratio
from maskface.io_utils import atomic_write_bytes, atomic_write_json

ARRIVALS = {"back to back": 0.0, "after 50 ms idle": 0.05}
QUIET_S = 0.15  # between rounds' measurements: no spinning left over from the previous one


def pipelines(onnx_dir: Path, int8_dir: Path | None, threads: int, stop_spinning: bool) -> dict:
    """path name -> in-process predictor (callable on a decoded BGR image) with that spinning policy."""
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime, graph_paths

    fp32 = OrtRuntime(*graph_paths(onnx_dir), threads, stop_spinning=stop_spinning)
    out = {"fp32": OnnxPredictor(fp32, max_side=None)}
    try:
        from maskface.runtimes.openvino_runtime import (OpenVinoPredictor, OpenVinoRuntime,
                                                        OpenVinoUnavailableError)
    except ImportError:
        return out
    for precision, folder in (("int8", int8_dir), ("bf16", onnx_dir)):
        if folder is None:
            continue
        try:
            runtime = OpenVinoRuntime(folder, precision, threads, stop_spinning=stop_spinning)
        except (OpenVinoUnavailableError, FileNotFoundError) as exc:
            print(f"ort_spinning: no {precision} path: {exc}", file=sys.stderr)
            continue
        out[precision] = OpenVinoPredictor(runtime, max_side=None)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx-dir", required=True, help="detector.onnx + keypoint_head_portable.onnx")
    p.add_argument("--int8-dir", help="export/quantize_int8.py's folder (the int8 path); omitted: no int8 row")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="artifacts/bench")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the paired ratio needs two rounds)")

    from maskface.preprocess import decode_image

    jpeg = encode_jpeg(sample_image((640, 480)))
    variants = {"spinning": False, "stopped": True}
    runs = {v: pipelines(Path(args.onnx_dir), Path(args.int8_dir) if args.int8_dir else None, args.threads, stop)
            for v, stop in variants.items()}
    keys = [(path, variant, arrival) for path in runs["stopped"] for variant in variants for arrival in ARRIVALS]
    for path, variant, _ in keys[::len(ARRIVALS)]:  # warm-up: first-call allocations
        for _ in range(3):
            runs[variant][path](decode_image(jpeg))
    times: dict[tuple, list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            path, variant, arrival = k
            predictor = runs[variant][path]
            time.sleep(QUIET_S)
            predictor(decode_image(jpeg))
            time.sleep(ARRIVALS[arrival])
            t0 = time.perf_counter()
            predictor(decode_image(jpeg))
            times[k].append((time.perf_counter() - t0) * 1e3)

    rows = []
    for path in runs["stopped"]:
        for arrival in ARRIVALS:
            spin, stop = times[(path, "spinning", arrival)], times[(path, "stopped", arrival)]
            rows.append({"path": path, "arrival": arrival, "spinning_ms": float(np.median(spin)),
                         "stopped_ms": float(np.median(stop)), "stopped_over_spinning": paired_ratio(stop, spin),
                         "runs_ms": {"spinning": spin, "stopped": stop}})
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "?"),
              "threads": args.threads, "rounds": args.rounds, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ort_spinning.json", result)
    lines = [f"# ONNX Runtime spinning after a run: on vs stopped ({result['cpu']}, {args.threads} threads, "
             f"{args.rounds} rounds)", "", f"`{result['command']}`, {result['created']}", "",
             "Whole pipeline (JPEG in, faces out), median ms; paired: median of per-round ratios stopped / "
             "spinning [90 % bootstrap interval], < 1 means stopping is faster.", "",
             "| path | arrival | spinning (ONNX Runtime default) | stopped (ort_session) | paired |",
             "|---|---|---|---|---|"]
    for row in rows:
        pr = row["stopped_over_spinning"]
        lines.append(f"| {row['path']} | {row['arrival']} | {row['spinning_ms']:.1f} | {row['stopped_ms']:.1f} | "
                     f"{pr['median']:.2f} [{pr['low']:.2f}-{pr['high']:.2f}] |")
    atomic_write_bytes(out / "ort_spinning.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
