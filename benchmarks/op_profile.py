"""Where each CPU path's detector time goes, by kind of operation, against ONNX Runtime FP32 (issue #15).

    python benchmarks/op_profile.py --onnx-dir artifacts/onnx [--int8-dir artifacts/onnx_int8] [--rounds 20]

Paths: ONNX Runtime FP32 (the reference of every ratio) and INT8; OpenVINO FP32, BF16 (where the CPU
has native BF16) and INT8 (with the hint the served path uses: openvino_runtime.inference_hint). Each
round runs every path's detector once plainly (the wall time) and once with its runtime's own
per-operation timer on (ONNX Runtime's profiler, OpenVINO's performance counters), in a rotating
order, on scikit-image's astronaut preprocessed as the pipeline does (640x480 -> 640x512 input).

The operations fall into classes (OP_CLASSES): convolutions, layout reorders, normalisation,
quantise / dequantise, selection (TopK / Gather) and the rest (element-wise, concat, resize, ...).

The convolution floor of a path: its convolutions' own time / ONNX Runtime FP32's whole detector time,
paired per round. It is the ratio the path would reach if everything around its convolutions took no
time at all; a time goal below it cannot be met by work on the graph around the convolutions, only
by faster convolutions (other hardware, a smaller model).

--compare-group-norms adds each OpenVINO path with its GroupNorms as exported, beside the per-channel
moments OpenVINO runs by default (maskface.runtimes.group_norm_graph).

Writes OUT/op_profile.json, .md and .png (default OUT: artifacts/bench).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from benchmarks.latency import CPU_GOALS, sample_image
from benchmarks.latency_report import paired_ratio
from maskface.io_utils import atomic_write_bytes, atomic_write_json

REFERENCE = "onnxruntime"
# operation type (OpenVINO's node types and ONNX Runtime's op names) -> class; anything else: "other"
OP_CLASSES = {
    "convolution": {"Convolution", "GroupConvolution", "Deconvolution", "GroupDeconvolution", "FullyConnected",
                    "MatMul", "Gemm", "Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "QLinearConv",
                    "ConvInteger", "ConvTranspose", "QLinearMatMul", "MatMulInteger"},
    "layout reorder": {"Reorder", "Transpose", "ReorderInput", "ReorderOutput"},
    "normalisation": {"MVN", "InstanceNormalization", "GroupNormalization", "GroupNorm", "ReduceMean",
                      "LayerNormalization", "NormalizeL2"},
    "quantise": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "FakeQuantize"},
    "selection": {"TopK", "Gather", "GatherElements", "GatherND"},
}
CLASSES = (*OP_CLASSES, "other")
FLOOR_CLASS = "convolution"
EXPORTED_GROUP_NORMS = " (GroupNorms as exported)"  # --compare-group-norms' rows: OpenVinoGraph(group_norm_moments=False)


def op_class(op_type: str) -> str:
    return next((name for name, types in OP_CLASSES.items() if op_type in types), "other")


def class_times(ops: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(operation type, ms) pairs -> ms per class, every class present."""
    out = dict.fromkeys(CLASSES, 0.0)
    for op_type, ms in ops:
        out[op_class(op_type)] += ms
    return out


def ort_runs(profile: list[dict]) -> list[list[tuple[str, float]]]:
    """ONNX Runtime profiler events -> per model run (in order), the (op name, ms) of its kernels: the
    kernel events that start inside that run's span."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in profile
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    out: list[list[tuple[str, float]]] = [[] for _ in runs]
    starts = np.array([start for start, _ in runs])
    for e in profile:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i >= 0 and e["ts"] <= runs[i][1]:
            out[i].append((e["args"]["op_name"], e["dur"] / 1e3))
    return out


class OrtPath:
    """A detector in ONNX Runtime: one plain session to time, one with the profiler on."""

    def __init__(self, graph: Path, threads: int, work: Path):
        from maskface.runtimes.ort_runtime import ort_session

        self.plain = ort_session(graph, threads)
        self.profiled = ort_session(graph, threads, profile_prefix=work / f"ort_{graph.stem}")
        self.input = self.plain.get_inputs()[0].name

    def run(self, x: np.ndarray) -> None:
        self.plain.run(None, {self.input: x})

    def profile(self, x: np.ndarray) -> None:
        self.profiled.run(None, {self.input: x})

    def operations(self) -> list[list[tuple[str, float]]]:
        """Per profiled run, its (op name, ms); ends the profiler."""
        with open(self.profiled.end_profiling()) as f:
            return ort_runs(json.load(f))


class OpenVinoPath:
    """A detector in OpenVINO at one inference hint: one compiled model to time, one with performance counters."""

    def __init__(self, graph: Path, hint: str, threads: int, group_norm_moments: bool = True):
        from maskface.runtimes.openvino_runtime import OpenVinoGraph

        self.plain = OpenVinoGraph(graph, hint, threads, static_shapes=True, group_norm_moments=group_norm_moments)
        self.profiled = OpenVinoGraph(graph, hint, threads, static_shapes=True, profile=True,
                                      group_norm_moments=group_norm_moments)
        self.input = self.plain.input_names[0]
        self.runs: list[list[tuple[str, float]]] = []

    def run(self, x: np.ndarray) -> None:
        self.plain.run(None, {self.input: x})

    def profile(self, x: np.ndarray) -> None:
        self.profiled.run(None, {self.input: x})
        self.runs.append([(node_type, ms) for node_type, _, ms in self.profiled.operation_times()])

    def operations(self) -> list[list[tuple[str, float]]]:
        return self.runs


def build_paths(onnx_dir: Path, int8_dir: Path | None, threads: int, work: Path,
                compare_group_norms: bool = False) -> dict[str, object]:
    """path name (latency.py's backend names; openvino-fp32 besides) -> OrtPath / OpenVinoPath; a path that
    cannot run here is left out with its reason on stderr (ONNX Runtime FP32 must run). compare_group_norms:
    each OpenVINO path also with the GroupNorms as exported (EXPORTED_GROUP_NORMS appended to its name)."""
    from maskface.runtimes.ort_runtime import graph_paths

    fp32_graph = graph_paths(onnx_dir, "fp32")[0]
    int8_graph = graph_paths(int8_dir, "int8")[0] if int8_dir else None
    paths: dict[str, object] = {REFERENCE: OrtPath(fp32_graph, threads, work)}
    wanted: list[tuple[str, Callable[[], object]]] = []
    if int8_graph is not None:
        wanted.append(("onnxruntime-int8", lambda: OrtPath(int8_graph, threads, work)))
    try:
        from maskface.runtimes.openvino_runtime import (OpenVinoUnavailableError, inference_hint,
                                                        require_openvino_precision)
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(f"op_profile: no OpenVINO paths: {exc}", file=sys.stderr)
        openvino = []
    else:
        openvino = [("fp32", fp32_graph), ("bf16", fp32_graph)] + ([("int8", int8_graph)] if int8_graph else [])

    def openvino_path(precision: str, graph: Path, moments: bool):
        require_openvino_precision(precision)
        return OpenVinoPath(graph, inference_hint(precision), threads, moments)

    for precision, graph in openvino:
        for moments in (True, False) if compare_group_norms else (True,):
            name = f"openvino-{precision}" + ("" if moments else EXPORTED_GROUP_NORMS)
            wanted.append((name, lambda p=precision, g=graph, m=moments: openvino_path(p, g, m)))
    for name, make in wanted:
        try:
            paths[name] = make()
        except (FileNotFoundError, RuntimeError, ImportError) as exc:  # OpenVinoUnavailableError is one
            print(f"op_profile: no {name} path: {exc}", file=sys.stderr)
    return paths


def measure(paths: Mapping[str, object], x: np.ndarray, rounds: int, warmup: int = 3, progress: bool = True):
    """-> (wall ms per path per round, per path per round the (op type, ms) of its profiled run)."""
    from tqdm import tqdm

    for path in paths.values():
        for _ in range(warmup):
            path.run(x)
            path.profile(x)
    names = list(paths)
    wall: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(rounds), desc="op profile", dynamic_ncols=True, disable=not progress):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            paths[name].run(x)
            wall[name].append((time.perf_counter() - t0) * 1e3)
        for name in order:
            paths[name].profile(x)
    # each path's profiled runs start with its warm-up ones: summarise keeps the last `rounds`
    operations = {name: paths[name].operations() for name in names}
    return wall, operations


def summarise(wall: Mapping[str, list[float]], operations: Mapping[str, list[list[tuple[str, float]]]],
              goals: Mapping[str, float]) -> list[dict]:
    """One row per path: wall time and ratio to the reference, ms per class, each class's paired ratio to
    the reference's wall time, the convolution floor and what it says of the path's goal."""
    reference = wall[REFERENCE]
    rows = []
    for name, times in wall.items():
        per_round = [class_times(ops) for ops in operations[name]][-len(times):]
        class_ms = {c: [run[c] for run in per_round] for c in CLASSES}
        profiled_total = [sum(run.values()) for run in per_round]
        floor = paired_ratio(class_ms[FLOOR_CLASS], reference)
        goal = goals.get(name)
        row = {"path": name, "wall_ms": float(np.median(times)), "wall_ms_runs": times,
               "vs_reference": paired_ratio(times, reference) if name != REFERENCE else None,
               "class_ms": {c: float(np.median(v)) for c, v in class_ms.items()},
               "class_vs_reference": {c: paired_ratio(v, reference) for c, v in class_ms.items()},
               "profiled_total_ms": float(np.median(profiled_total)),
               "operations_per_run": len(operations[name][-1]) if operations[name] else 0,
               "convolution_floor": floor, "goal": goal}
        if goal is not None and floor is not None:
            row["goal_below_floor"] = floor["low"] > goal
        rows.append(row)
    return rows


def path_goals() -> dict[str, float]:
    """The detector-time goals of issue #15 by path (latency.py's CPU_GOALS)."""
    return {backend: bound for backend, (stage, bound) in CPU_GOALS.items() if stage == "detector"}


def network_input(size: tuple[int, int]) -> np.ndarray:
    from maskface.config import InputConfig
    from maskface.preprocess import prepare_image

    return np.ascontiguousarray(prepare_image(sample_image(size), InputConfig(), None).image[None], np.float32)


def markdown(result: dict) -> str:
    def ratio(pr):
        return "-" if pr is None else f"{pr['median']:.2f} [{pr['low']:.2f}-{pr['high']:.2f}]"

    lines = [f"# Detector time by kind of operation ({result['cpu']}, {result['threads']} threads, "
             f"{result['rounds']} rounds, input {result['input']})", "",
             f"`{result['command']}`, {result['created']}", "",
             "Wall: median ms of the plain runs; ratio: paired per round to ONNX Runtime FP32's wall time "
             "[90 % bootstrap interval]. Per class: median ms of the runtime's own timer in the profiled runs. "
             "Convolution floor: the convolutions' own time / ONNX Runtime FP32's wall time, the ratio the path "
             "would reach if nothing but its convolutions took time.", "",
             "| path | wall ms | ratio | goal | convolution floor | " + " | ".join(CLASSES) + " | sum of ops |",
             "|---|---|---|---|---|" + "---|" * len(CLASSES) + "---|"]
    for row in result["rows"]:
        goal = "-" if row["goal"] is None else f"<= {row['goal']:.2f}"
        lines.append(f"| {row['path']} | {row['wall_ms']:.1f} | {ratio(row['vs_reference'])} | {goal} | "
                     f"{ratio(row['convolution_floor'])} | "
                     + " | ".join(f"{row['class_ms'][c]:.1f}" for c in CLASSES) + f" | {row['profiled_total_ms']:.1f} |")
    verdicts = [f"- {row['path']}: the goal {row['goal']:.2f}x is below the convolutions' own "
                f"{row['convolution_floor']['low']:.3f}x (interval's low end): it cannot be met by work around them"
                for row in result["rows"] if row.get("goal_below_floor")]
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    reference = next(r for r in rows if r["path"] == REFERENCE)["wall_ms"]
    first_goal = next((i for i, r in enumerate(rows) if r["goal"] is not None), None)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.6))
    for i, row in enumerate(rows):
        left = 0.0
        for j, c in enumerate(CLASSES):
            width = row["class_ms"][c] / reference
            ax.barh(i, width, left=left, color=f"C{j}", label=c if i == 0 else None)
            left += width
        ax.plot(row["wall_ms"] / reference, i, "k|", markersize=18, label="wall time" if i == 0 else None)
        if row["goal"] is not None:
            ax.plot(row["goal"], i, "rv", markersize=9, label="goal" if i == first_goal else None)
    ax.set_yticks(range(len(rows)), [r["path"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("time / ONNX Runtime FP32 detector wall time")
    ax.set_title(f"Detector time by kind of operation ({result['input']}, {result['threads']} threads)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx-dir", required=True, help="detector.onnx (FP32)")
    p.add_argument("--int8-dir", help="export/quantize_int8.py's folder (detector_int8.onnx); omitted: no INT8 rows")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--size", default="640x480", help="image WxH before preprocessing (default 640x480)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--out", default="artifacts/bench")
    p.add_argument("--compare-group-norms", action="store_true",
                   help="each OpenVINO path also with its GroupNorms as exported (not as per-channel moments)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (the paired ratio needs two rounds)")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r} must be WIDTHxHEIGHT, e.g. 640x480")
    x = network_input((width, height))
    with tempfile.TemporaryDirectory() as work:
        paths = build_paths(Path(args.onnx_dir), Path(args.int8_dir) if args.int8_dir else None, args.threads,
                            Path(work), args.compare_group_norms)
        wall, operations = measure(paths, x, args.rounds, progress=not args.no_progress)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), "?"),
              "threads": args.threads, "rounds": args.rounds, "input": "x".join(str(d) for d in x.shape[:1:-1]),
              "classes": {c: sorted(t) for c, t in OP_CLASSES.items()},
              "rows": summarise(wall, operations, path_goals())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "op_profile.json", result)
    text = markdown(result)
    atomic_write_bytes(out / "op_profile.md", text.encode())
    plot(result, out / "op_profile.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
