"""Mixed-precision INT8: which activations of the INT8 detector to keep in FP32, chosen by measurement (issue 15).

    python export/int8_mixed.py --int8-dir artifacts/onnx_int8 --data runs/demo-data-consensus \
        [--out artifacts/onnx_int8_mixed] [--sensitivity-images 40] [--images 400] [--keep 0,2,4,8,16,32]
        [--write K]

An activation of the QDQ graph (export/quantize_int8.py) is one QuantizeLinear -> DequantizeLinear pair on a
tensor that is not a constant: the graph input, each quantised conv's output, the residual sums. Keeping one
in FP32 replaces that pair with a Clip to the range it could represent: the quantiser folded the Relu / Clip
before it into that range, so only the rounding goes. Its readers then get an FP32 tensor: in OpenVINO the
convs that read it run in floating point (their weights stay the rounded INT8 ones), its producer keeps
INT8 inputs.

1. Sensitivity, on the first --sensitivity-images VAL images: the graph with every activation in FP32
   (weights INT8) is the base; then each activation alone is quantised, and its sensitivity is how much
   the mean squared drift at FP32's own anchors grows over the base (box, max |coordinate difference|,
   plus landmarks, point distance; px^2 of the original image; export/anchor_drift.py's measurement),
   each kind's samples above its 99th percentile left out (TRIMMED_SHARE: one discrete flip there
   outweighed every activation's own share).
   Mean squares of independent rounding errors add, so the ranking is of each activation's own share.
   Saved after every activation (OUT/sensitivity.json): a stopped run goes on where it stopped.
2. Order: by sensitivity per GFLOP that FP32 costs (the convs reading the activation, at 640x480), the
   most drift removed per unit of work first; activations whose sensitivity is not above chance (the largest fall measured:
   quantising one more activation cannot lower the drift but by chance) are never kept.
3. Curve: for each K of --keep, the graph with the first K activations in FP32, on the first --images
   VAL images at FP32's anchors (box / landmark median, p90, p99, max; ONNX Runtime) and its OpenVINO
   detector time against ONNX Runtime FP32's, interleaved (ratio of paired rounds).
4. --write K: OUT/detector_int8.onnx with the first K in FP32 (and the FP32 graphs beside it), served
   as `maskface serve --target cpu --onnx-dir OUT --precision int8`.

Writes OUT/int8_mixed.json, .md and int8_mixed.png (drift p99 against time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

#: The size the FP32 cost of an activation is counted at (issue 15's timing size).
COST_SIZE = (480, 640)
SENSITIVITY_FORMAT = "3"


@dataclass
class Activation:
    """One quantised activation: its tensor, the Quantize / Dequantize nodes on it, the nodes reading
    the dequantised tensor, and the GFLOP of the convs among them at COST_SIZE."""

    tensor: str
    quantize: str
    dequantize: list[str]
    readers: list[str]
    conv_gflop: float


def _constants(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def conv_gflops(model, hw: tuple[int, int] = COST_SIZE) -> dict[str, float]:
    """GFLOP (2 x multiply-adds) of each Conv node of `model` for one [1, 3, H, W] input, from ONNX shape
    inference with the input's dimensions fixed. Raises ValueError for a conv whose shapes stay unknown."""
    import onnx
    from onnx import numpy_helper

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim, (1, 3, *hw)):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.output)}
    weights = {i.name: list(i.dims) for i in inferred.initializer}
    # a QDQ graph's conv reads its weight through a DequantizeLinear of the INT8 initializer
    weights.update({n.output[0]: weights[n.input[0]] for n in inferred.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in weights})
    out = {}
    for node in inferred.node:
        if node.op_type != "Conv":
            continue
        shape, weight = shapes.get(node.output[0]), weights.get(node.input[1])
        if not shape or 0 in shape or weight is None:
            raise ValueError(f"conv {node.name}: output shape or weight unknown after shape inference")
        out[node.name] = 2.0 * float(np.prod(shape)) * float(np.prod(weight[1:])) / 1e9
    return out


def activations(model, hw: tuple[int, int] | None = COST_SIZE) -> list[Activation]:
    """The quantised activations of a QDQ graph, in graph order (module doc); hw None: conv_gflop 0 (no
    shape inference)."""
    graph = model.graph
    constants = _constants(graph)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    gflop = conv_gflops(model, hw) if hw else {}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        dequantize = [d for d in readers.get(node.output[0], []) if d.op_type == "DequantizeLinear"]
        if len(dequantize) != len(readers.get(node.output[0], [])):
            raise ValueError(f"{node.name}: its quantised tensor is read by a node other than DequantizeLinear")
        users = [u for d in dequantize for u in readers.get(d.output[0], [])]
        found.append(Activation(node.input[0], node.name, [d.name for d in dequantize], [u.name for u in users],
                                sum(gflop.get(u.name, 0.0) for u in users)))
    return found


def quantiser_range(model, quantize: str) -> tuple[float, float]:
    """(lowest, highest) value the QuantizeLinear node `quantize` can give back through its Dequantize:
    (qmin - zero) x scale, (qmax - zero) x scale, qmin / qmax of the zero point's integer type."""
    from onnx import numpy_helper

    node = next(n for n in model.graph.node if n.name == quantize)
    inits = {i.name: i for i in model.graph.initializer if i.name in node.input[1:3]}
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 else np.uint8(0)
    if scale.size != 1:
        raise ValueError(f"{quantize}: a per-channel activation scale has no single range")
    info = np.iinfo(zero.dtype)
    z = float(zero.reshape(-1)[0])
    return (info.min - z) * float(scale.reshape(-1)[0]), (info.max - z) * float(scale.reshape(-1)[0])


def is_signed(model, activation: Activation) -> bool:
    """Whether a quantised activation's range holds negative values; else it starts at 0 (the quantiser folded
    a Relu into it)."""
    return quantiser_range(model, activation.quantize)[0] < 0.0


def keep_fp32(model, tensors: Sequence[str], clip: bool = True):
    """A copy of QDQ `model` with the activation pairs on `tensors` unrounded: each Quantize -> Dequantize
    pair becomes a Clip to the range the pair could represent, so what it did besides rounding stays (the
    quantiser folded the Relu / Clip before it into that range, and saturated at the calibrated limits).
    clip False: unclipped too; a pair whose range starts at 0 becomes the Relu the quantiser folded into it,
    any other pair goes. Raises KeyError for a tensor that is not a quantised activation."""
    import onnx
    from onnx import helper, numpy_helper

    known = {a.tensor: a for a in activations(model, hw=None)} if tensors else {}
    missing = [t for t in tensors if t not in known]
    if missing:
        raise KeyError(f"not quantised activations of this graph: {missing[:3]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_name = {n.name: n for n in graph.node}
    replace, drop, rename = {}, set(), {}
    for tensor in tensors:
        act = known[tensor]
        lo, hi = quantiser_range(out, act.quantize)
        clamped = by_name[act.dequantize[0]].output[0]  # the name its readers (and graph outputs) know
        bounds = [f"int8_mixed/{tensor}/min", f"int8_mixed/{tensor}/max"]
        graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in zip(bounds, (lo, hi)))
        # in the Quantize node's place: graph order stays topological
        if clip:
            replace[act.quantize] = helper.make_node("Clip", [tensor, *bounds], [clamped], name=f"int8_mixed/{tensor}")
        else:
            replace[act.quantize] = helper.make_node("Relu" if lo >= 0.0 else "Identity", [tensor], [clamped],
                                                     name=f"int8_mixed/{tensor}")
        drop.update(act.dequantize)
        rename.update({by_name[d].output[0]: clamped for d in act.dequantize[1:]})
    nodes = [replace.get(n.name, n) for n in graph.node if n.name not in drop]
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for output in graph.output:
        if output.name in rename:
            nodes.append(helper.make_node("Identity", [rename[output.name]], [output.name],
                                          name=f"int8_mixed/{output.name}"))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)  # the removed pairs' scales and zero points
    return out


def drop_unused_initializers(graph) -> None:
    """Removes the initializers no node of `graph` reads (runtimes warn about each)."""
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


@dataclass
class Reference:
    """FP32's view of one image: the prepared image, its detection outputs with anchors, the kept slots and
    their keypoint-head landmarks (export/anchor_drift.py)."""

    prepared: object
    detections: tuple
    kept: np.ndarray
    landmarks: np.ndarray | None


def references(fp32, records, input_cfg, inference, max_side: int = 640, progress: bool = True) -> list[Reference]:
    from tqdm import tqdm

    from export.anchor_drift import detect_with_anchors, reference_landmarks
    from maskface.data.dataset import read_image
    from maskface.pipeline import select_candidates
    from maskface.preprocess import prepare_image

    out = []
    for record in tqdm(records, desc="FP32 anchors", dynamic_ncols=True, disable=not progress):
        prepared = prepare_image(read_image(record.image_path, getattr(record, "source", "")), input_cfg, max_side)
        detections = detect_with_anchors(fp32, prepared.image)
        kept = np.asarray(select_candidates(detections[0], detections[1], inference)).reshape(-1)
        landmarks = reference_landmarks((fp32, detections), kept) if len(kept) else None
        out.append(Reference(prepared, detections, kept, landmarks))
    return out


def drift_at_anchors(runtime, fp32, refs: Sequence[Reference]) -> dict:
    """Box / landmark drift samples (px) of `runtime` at FP32's kept anchors over `refs`, and how many of
    those anchors its top-k lost."""
    from export.anchor_drift import detect_with_anchors, same_anchor_drift

    box, landmark, missing = [], [], 0
    for ref in refs:
        if not len(ref.kept):
            continue
        got = same_anchor_drift((fp32, ref.detections), (runtime, detect_with_anchors(runtime, ref.prepared.image)),
                                ref.kept, ref.prepared, ref.landmarks)
        box += got["box_px"]
        landmark += got["landmark_px"]
        missing += got["missing"]
    return {"box_px": box, "landmark_px": landmark, "missing": missing}


#: Share of each kind's drift samples (box, landmark) the sensitivity averages: the smallest ones, up to
#: issue 15's p99. Above it sit discrete jumps: on the demo model one landmark of 565 jumping 8.7 -> 30.6 px
#: whenever any of 25 unrelated activations was quantised made each look 60x as sensitive as the most
#: sensitive other one (1.66 px^2 against 0.028; measured).
TRIMMED_SHARE = 0.99


def mean_square(drift: dict, share: float = TRIMMED_SHARE) -> float:
    """Box plus landmark mean squared drift (px^2) over the smallest ceil(share x n) samples of each: what
    the sensitivity compares."""
    total = 0.0
    for key in ("box_px", "landmark_px"):
        squares = np.sort(np.square(np.asarray(drift[key], np.float64)))
        if squares.size:
            total += float(np.mean(squares[:int(np.ceil(share * squares.size))]))
    return total


def ranked(sensitivity: dict, acts: Sequence[Activation], noise: float) -> list[str]:
    """Activations whose sensitivity exceeds `noise`, most sensitivity per GFLOP first (module doc)."""
    cost = {a.tensor: a.conv_gflop for a in acts}
    chosen = [t for t, s in sensitivity.items() if s > noise]
    # an activation no conv reads costs no conv work in FP32: a floor keeps the ratio finite
    return sorted(chosen, key=lambda t: -sensitivity[t] / max(cost[t], 1e-3))


def _fingerprint(int8_path: Path, records: Sequence) -> str:
    digest = hashlib.sha256(Path(int8_path).read_bytes())
    digest.update(SENSITIVITY_FORMAT.encode())
    for record in records:
        digest.update(str(record.image_path).encode())
    return digest.hexdigest()


def measure_sensitivity(int8_model, keypoint_path: Path, fp32, refs, state_path: Path, fingerprint: str,
                        progress: bool = True) -> dict:
    """{"base": mean square with every activation in FP32, "full": with all quantised, "per_activation":
    {tensor: growth over base with it alone quantised}}, resumed from and saved to state_path after every
    measurement (module doc, step 1)."""
    from tqdm import tqdm

    from maskface.io_utils import atomic_write_json
    from maskface.runtimes.ort_runtime import OrtRuntime

    state = {}
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != fingerprint:
            print(f"int8_mixed: {state_path} is of another graph or image set: measuring afresh", file=sys.stderr)
            state = {}
    state.setdefault("fingerprint", fingerprint)
    state.setdefault("per_activation", {})
    tensors = [a.tensor for a in activations(int8_model, hw=None)]

    def drift_with(quantised: Sequence[str]) -> float:
        graph = keep_fp32(int8_model, [t for t in tensors if t not in set(quantised)])
        runtime = OrtRuntime(graph.SerializeToString(), keypoint_path, threads=None)
        return mean_square(drift_at_anchors(runtime, fp32, refs))

    for key, quantised in (("base", []), ("full", tensors)):
        if key not in state:
            state[key] = drift_with(quantised)
            atomic_write_json(state_path, state)
    todo = [t for t in tensors if t not in state["per_activation"]]
    for tensor in tqdm(todo, desc="sensitivity", dynamic_ncols=True, disable=not progress):
        state["per_activation"][tensor] = drift_with([tensor]) - state["base"]
        atomic_write_json(state_path, state)
    return state


def time_detectors(graphs: dict, image: np.ndarray, rounds: int, progress: bool = True) -> dict:
    """Median ms of each detector (name -> object with run(None, feeds)), run in turn each round, and the
    median over rounds of its time / the first detector's time in that round."""
    from tqdm import tqdm

    feed = {"images": np.ascontiguousarray(image, np.float32)}
    for graph in graphs.values():  # warm-up (and OpenVINO's compile for this shape)
        graph.run(None, feed)
    times = {name: [] for name in graphs}
    for _ in tqdm(range(rounds), desc="timing", dynamic_ncols=True, disable=not progress):
        for name, graph in graphs.items():
            start = time.perf_counter()
            graph.run(None, feed)
            times[name].append(time.perf_counter() - start)
    first = np.asarray(times[next(iter(graphs))])
    return {name: {"ms": 1e3 * float(np.median(t)), "ratio": float(np.median(np.asarray(t) / first))}
            for name, t in times.items()}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# INT8 with its most sensitive activations in FP32 ({s['images']} val images, {s['anchors']} FP32 "
             f"detections; sensitivity on {s['sensitivity_images']})", "",
             "Drift at FP32's own anchors in px of the original image, ONNX Runtime; time: OpenVINO INT8 detector "
             f"at {s['timing_size'][1]}x{s['timing_size'][0]} / ONNX Runtime FP32, paired over {s['rounds']} "
             "interleaved rounds (export/int8_mixed.py).", "",
             "| activations in FP32 | FP32 GFLOP | box median / p90 / p99 / max | landmark median / p99 | "
             "missing | OpenVINO ms | time / FP32 |", "|---|---|---|---|---|---|---|"]
    for row in report["curve"]:
        b, lm = row["box_px"], row["landmark_px"]
        lines.append(f"| {row['keep']} | {row['fp32_gflop']:.2f} | {b['median']:.2f} / {b['p90']:.2f} / "
                     f"{b['p99']:.2f} / {b['max']:.2f} | {lm['median']:.2f} / {lm['p99']:.2f} | {row['missing']} | "
                     f"{row['openvino_ms']:.1f} | {row['ratio']:.2f} |")
    lines += ["", f"ONNX Runtime FP32 detector: {report['fp32_ms']:.1f} ms. Total conv work: "
              f"{report['total_conv_gflop']:.2f} GFLOP.", "",
              f"Box + landmark mean square drift on the sensitivity images: {report['base_mean_square']:.4f} px^2 "
              f"with every activation in FP32 (weights INT8), {report['full_mean_square']:.4f} with all quantised; "
              f"the {len(report['activations'])} activations' own growths sum to "
              f"{report['sum_of_sensitivities']:.4f} (noise {report['noise']:.4f}). The most sensitive:", "",
              "| activation | sensitivity (px^2) | FP32 cost (GFLOP) |", "|---|---|---|"]
    for row in report["top"]:
        lines.append(f"| `{row['tensor']}` | {row['sensitivity']:.4f} | {row['conv_gflop']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    curve = report["curve"]
    x = [r["ratio"] for r in curve]
    for key, label in (("box_px", "box p99"), ("landmark_px", "landmark p99")):
        ax.plot(x, [r[key]["p99"] for r in curve], "o-", label=label)
    for r in curve:
        ax.annotate(str(r["keep"]), (r["ratio"], r["box_px"]["p99"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="issue 15: 1 px")
    ax.set_xlabel("OpenVINO detector time / ONNX Runtime FP32")
    ax.set_ylabel("drift p99 at FP32's anchors (px)")
    ax.set_title("INT8, K most sensitive activations in FP32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--int8-dir", default="artifacts/onnx_int8",
                   help="export/quantize_int8.py output: detector.onnx, detector_int8.onnx, keypoint head")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--out", default="artifacts/onnx_int8_mixed", help="output folder (default %(default)s)")
    p.add_argument("--checkpoint", help="model whose input / inference settings apply (default: the demo model)")
    p.add_argument("--sensitivity-images", type=int, default=40, help="val images per activation (default %(default)s)")
    p.add_argument("--images", type=int, default=400, help="val images of the curve (default %(default)s)")
    p.add_argument("--keep", default="0,2,4,8,16,32", help="comma list of K for the curve (default %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default %(default)s)")
    p.add_argument("--write", type=int, help="write OUT/detector_int8.onnx with the first K activations in FP32")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        args.keep = sorted({int(k) for k in args.keep.split(",") if k.strip()})
    except ValueError:
        p.error(f"--keep takes a comma list of integers, got {args.keep!r}")
    if not args.keep or min(args.keep) < 0:
        p.error("--keep needs at least one K >= 0")
    for name in ("sensitivity_images", "images", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.write is not None and args.write < 0:
        p.error("--write K needs K >= 0")
    int8_dir = Path(args.int8_dir)
    for name in ("detector.onnx", "detector_int8.onnx", "keypoint_head_portable.onnx"):
        if not (int8_dir / name).is_file():
            p.error(f"{int8_dir / name} not found: run export/quantize_int8.py --out {int8_dir} first")
    if not (Path(args.data) / "val" / "label.txt").is_file():
        p.error(f"{args.data}/val/label.txt not found: build the demo data first (maskface demo-data --out {args.data})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import onnx

    from export.anchor_drift import graphs_with_anchors
    from export.precision_compare import drift_stats, load_val_records
    from export.quantize_int8 import timing_input
    from maskface.checkpoint import load_model
    from maskface.demo.weights import demo_checkpoint
    from maskface.io_utils import atomic_write_bytes, atomic_write_json
    from maskface.runtimes.openvino_runtime import OpenVinoGraph, inference_hint
    from maskface.runtimes.ort_runtime import OrtRuntime, ort_session

    int8_dir, out = Path(args.int8_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.checkpoint or str(demo_checkpoint()))
    cfg = model.cfg
    records = load_val_records(args.data, max_images=max(args.images, args.sensitivity_images))
    work = out / "work"
    fp32_dir = graphs_with_anchors(int8_dir, "detector.onnx", "keypoint_head_portable.onnx", work / "fp32")
    keypoint_path = fp32_dir / "keypoint_head_portable.onnx"
    fp32 = OrtRuntime(fp32_dir / "detector.onnx", keypoint_path)
    int8_path = int8_dir / "detector_int8.onnx"
    # the anchors exposed in the INT8 graph too: the drift is read at FP32's anchors
    graphs_with_anchors(int8_dir, "detector_int8.onnx", "keypoint_head_portable.onnx", work / "int8")
    int8_model = onnx.load(str(work / "int8" / "detector_int8.onnx"))
    acts = activations(int8_model)
    progress = not args.no_progress

    sens_records = records[:args.sensitivity_images]
    refs = references(fp32, records, cfg.input, cfg.inference, progress=progress)
    state = measure_sensitivity(int8_model, keypoint_path, fp32, refs[:args.sensitivity_images],
                                out / "sensitivity.json", _fingerprint(int8_path, sens_records), progress)
    # noise: quantising one more activation cannot lower the drift but by chance, so the largest fall
    # measured is how far chance moves a growth
    noise = max(0.0, -min(state["per_activation"].values(), default=0.0))
    order = ranked(state["per_activation"], acts, noise)
    cost = {a.tensor: a.conv_gflop for a in acts}

    served = onnx.load(str(int8_path))
    timing_image = timing_input(records[0], cfg.input)
    curve, graphs = [], {"fp32": ort_session(int8_dir / "detector.onnx")}
    for k in args.keep:
        names = order[:k]
        if curve and len(names) == curve[-1]["keep"]:
            continue  # fewer activations above chance than K: the same graph as the row before
        folder = work / f"keep{k}"
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(keep_fp32(served, names), str(folder / "detector_int8.onnx"))
        probe = keep_fp32(int8_model, names)
        drift = drift_at_anchors(OrtRuntime(probe.SerializeToString(), keypoint_path), fp32, refs[:args.images])
        graphs[k] = OpenVinoGraph(folder / "detector_int8.onnx", inference_hint("int8"), static_shapes=True)
        curve.append({"keep": len(names), "requested": k, "tensors": names,
                      "fp32_gflop": sum(cost[t] for t in names), "missing": drift["missing"],
                      "box_px": drift_stats(drift["box_px"]), "landmark_px": drift_stats(drift["landmark_px"])})
    timing = time_detectors(graphs, timing_image, args.rounds, progress)
    for row in curve:
        row["openvino_ms"], row["ratio"] = timing[row["requested"]]["ms"], timing[row["requested"]]["ratio"]
    sens = state["per_activation"]
    top = sorted(sens, key=lambda t: -sens[t])[:15]
    report = {"settings": {"int8_dir": str(int8_dir), "data": args.data, "images": min(args.images, len(refs)),
                           "sensitivity_images": len(sens_records), "rounds": args.rounds,
                           "timing_size": list(timing_image.shape[2:]),
                           "anchors": int(sum(len(r.kept) for r in refs[:args.images]))},
              "base_mean_square": state["base"], "full_mean_square": state["full"],
              "sum_of_sensitivities": sum(state["per_activation"].values()), "noise": noise,
              "fp32_ms": timing["fp32"]["ms"],
              "total_conv_gflop": sum(conv_gflops(int8_model).values()),
              "activations": [asdict(a) | {"sensitivity": sens.get(a.tensor)} for a in acts],
              "order": order, "curve": curve,
              "top": [{"tensor": t, "sensitivity": sens[t], "conv_gflop": cost[t]} for t in top]}
    atomic_write_json(out / "int8_mixed.json", report)
    atomic_write_bytes(out / "int8_mixed.md", markdown(report).encode())
    plot(report, out / "int8_mixed.png")
    print(markdown(report))
    if args.write is not None:
        onnx.save(keep_fp32(served, order[:args.write]), str(out / "detector_int8.onnx"))
        for name in ("detector.onnx", "keypoint_head_portable.onnx", "keypoint_head_portable_int8.onnx"):
            if (int8_dir / name).is_file():
                shutil.copyfile(int8_dir / name, out / name)
        print(f"int8_mixed: wrote {out / 'detector_int8.onnx'} with {len(order[:args.write])} activations in FP32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
