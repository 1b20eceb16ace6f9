"""Drift of a reduced-precision path with FP32's selection held fixed: the same anchors, not the same faces.

    python export/anchor_drift.py --int8-dir artifacts/onnx_int8 [--data runs/demo-data]
        [--paths int8,int8-openvino,bf16,fp32-dither] [--max-images 400] [--out artifacts/anchor_drift]

export/precision_report.py pairs each path's final detections with FP32's. Where a path's top-k or NMS
keeps another of a face's overlapping candidates, that pair differs by the two anchors' offset (several
px) even if no candidate moved by more than a fraction of a pixel, so its box p99 mixes two things:
how far the numbers moved, and which candidate the selection picked. This script measures the first
alone. The FP32 detector graph (ONNX Runtime) gives, per validation image, the detections NMS keeps
at the default threshold and the ANCHOR of each (the detector's TopK indices, exposed as an extra
graph output). Each path then runs its own detector graph on the same image; for every one of those
anchors found among its top-k candidates it gives:

* box drift: max |coordinate difference| of the anchor's decoded box against FP32's, original pixels;
  also over FP32's box's longer side (box_relative), and in pixels per face size (FP32's box's longer
  side: SIZE_BUCKETS, the demo evaluation's), since a decoded box's error grows with its anchor's size;
* landmark drift: the path's keypoint head on the path's own features and that box, against FP32's
  keypoint head on FP32's features and box, point distances in original pixels;
* missing: FP32 anchors the path's top-k did not keep (its score fell below the top-k cut).

Paths: int8 (the QDQ detector of export/quantize_int8.py in ONNX Runtime), int8-openvino (the same in
OpenVINO), bf16 (the FP32 detector in OpenVINO with its BF16 hint, where the CPU has native BF16),
fp32-dither (the FP32 graph on the image plus +-1 grey level of seeded noise: the floor, as in
precision_report). Writes OUT/anchor_drift.json and .md.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

PATHS = ("int8", "int8-openvino", "bf16", "fp32-dither")
ANCHOR_OUTPUT = "anchor_index"


def expose_anchor_indices(model):
    """A copy of a detector ModelProto with the TopK that ranks its candidates ('scores' is its first
    output) giving its indices as one more graph output, ANCHOR_OUTPUT (int64 [N, K]), appended last.
    Raises ValueError when the graph has no such TopK."""
    from onnx import TensorProto, helper

    out = type(model)()
    out.CopyFrom(model)
    graph = out.graph
    topk = [n for n in graph.node if n.op_type == "TopK" and n.output[0] == "scores"]
    if len(topk) != 1 or len(topk[0].output) < 2 or not topk[0].output[1]:
        raise ValueError("expected one TopK node with outputs ('scores', indices) in the detector graph")
    graph.node.append(helper.make_node("Identity", [topk[0].output[1]], [ANCHOR_OUTPUT],
                                       name="anchor_drift/anchor_index"))
    graph.output.append(helper.make_tensor_value_info(ANCHOR_OUTPUT, TensorProto.INT64, None))
    return out


def graphs_with_anchors(source: Path, detector_file: str, keypoint_file: str, work: Path) -> Path:
    """work/ holding `detector_file` with its anchor indices exposed and a copy of `keypoint_file`,
    under the names maskface.runtimes.ort_runtime.graph_paths looks for."""
    import onnx

    work.mkdir(parents=True, exist_ok=True)
    onnx.save(expose_anchor_indices(onnx.load(str(source / detector_file))), str(work / detector_file))
    shutil.copyfile(source / keypoint_file, work / keypoint_file)
    return work


def detect_with_anchors(runtime, image: np.ndarray):
    """(scores [K], boxes [K, 4], anchors [K] int64, features) of one prepared image [3, H, W]."""
    scores, boxes, outputs = runtime.detect(image[None])  # the context maps, then ANCHOR_OUTPUT
    *features, anchors = outputs
    return scores[0], boxes[0], np.asarray(anchors[0]).astype(np.int64), features


def reference_landmarks(reference: tuple, kept: np.ndarray) -> np.ndarray:
    """The reference's keypoint-head landmarks (input pixels) at its kept slots: computed once per image and
    shared by every path's same_anchor_drift."""
    from maskface.pipeline import rois_of

    runtime, (_, boxes, _, features) = reference
    return runtime.keypoints(features, rois_of(boxes[kept]))[0]


def same_anchor_drift(reference: tuple, candidate: tuple, kept: np.ndarray, prepared,
                      ref_landmarks: np.ndarray | None = None) -> dict:
    """Box / landmark drift of `candidate` at the anchors of `reference`'s kept candidates (module doc).
    reference / candidate: (runtime, detect_with_anchors output); kept: slots of reference's top-k;
    ref_landmarks: reference_landmarks(reference, kept), computed here when not given."""
    from maskface.pipeline import rois_of

    _, (_, ref_boxes, ref_anchors, _) = reference
    cand_runtime, (_, cand_boxes, cand_anchors, cand_features) = candidate
    slot_of = {int(a): i for i, a in enumerate(cand_anchors)}
    found = [(i, k, slot_of[int(ref_anchors[k])]) for i, k in enumerate(kept) if int(ref_anchors[k]) in slot_of]
    result = {"anchors": len(kept), "missing": len(kept) - len(found), "box_px": [], "box_side_px": [],
              "landmark_px": []}
    if not found:
        return result
    positions, ref_slots, cand_slots = (np.array(s) for s in zip(*found))
    ref_b, cand_b = prepared.boxes_to_original(ref_boxes[ref_slots]), prepared.boxes_to_original(cand_boxes[cand_slots])
    result["box_px"] = np.abs(cand_b - ref_b).max(axis=1).tolist()
    result["box_side_px"] = (ref_b[:, 2:] - ref_b[:, :2]).max(axis=1).tolist()
    if ref_landmarks is None:
        ref_landmarks = reference_landmarks(reference, kept)
    cand_lm, _ = cand_runtime.keypoints(cand_features, rois_of(cand_boxes[cand_slots]))
    ref_lm, cand_lm = prepared.to_original(ref_landmarks[positions]), prepared.to_original(cand_lm)
    result["landmark_px"] = np.linalg.norm(cand_lm - ref_lm, axis=-1).ravel().tolist()
    return result


def size_buckets() -> list[tuple[float, float]]:
    """The demo evaluation's face-size buckets, the smallest open downwards (a kept box may be < 20 px)."""
    from maskface.demo.evaluate import SIZE_BUCKETS

    return [(0.0 if i == 0 else lo, hi) for i, (lo, hi) in enumerate(SIZE_BUCKETS)]


def box_drift_by_size(box_px, side_px) -> list[dict]:
    """drift_stats of the box drift of the anchors whose FP32 box's longer side is in each size bucket."""
    from export.precision_compare import drift_stats

    box, side = np.asarray(box_px, np.float64), np.asarray(side_px, np.float64)
    return [{"side_px": [lo, hi], **drift_stats(box[(side >= lo) & (side < hi)])} for lo, hi in size_buckets()]


def bucket_label(lo: float, hi: float) -> str:
    return f"< {hi:g}" if lo == 0 else (f">= {lo:g}" if hi >= 1e9 else f"{lo:g}-{hi:g}")


def to_markdown(report: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    s = report["settings"]
    lines = [f"# Drift at FP32's own anchors ({s['images']} images, score >= {s['score_threshold']}, "
             f"{s['anchors']} FP32 detections)", "",
             "The selection held fixed: each path's box and landmarks for the anchors FP32 keeps "
             "(export/anchor_drift.py). Original pixels.", "",
             "| path | missing anchors | box median | box p90 | box p99 | box max | landmark median | "
             "landmark p99 | landmark max |", "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['path']} | not run: {row['error']} | | | | | | | |")
            continue
        b, lm = row["box_px"], row["landmark_px"]
        lines.append(f"| {row['path']} | {row['missing']} | {f(b['median'])} | {f(b['p90'])} | {f(b['p99'])} | "
                     f"{f(b['max'])} | {f(lm['median'])} | {f(lm['p99'])} | {f(lm['max'])} |")
    sized = [r for r in report["rows"] if "box_px_by_size" in r]
    if sized:
        buckets = [bucket_label(*b["side_px"]) for b in sized[0]["box_px_by_size"]]
        lines += ["", "Box drift by face size (FP32's box's longer side, original px): anchors, median / p99 px; "
                  "and over the whole set, drift / that side (median / p99 / max, %).", "",
                  "| path | " + " | ".join(f"{b} px" for b in buckets) + " | drift / side (%) |",
                  "|---|" + "---|" * (len(buckets) + 1)]
        for row in sized:
            cells = [f"{b['count']}: {f(b['median'])} / {f(b['p99'])}" for b in row["box_px_by_size"]]
            r = row["box_relative"]
            rel = "-" if r["p99"] is None else f"{100 * r['median']:.2f} / {100 * r['p99']:.2f} / {100 * r['max']:.2f}"
            lines.append(f"| {row['path']} | " + " | ".join(cells) + f" | {rel} |")
    return "\n".join(lines) + "\n"


def measure(fp32, runtimes: dict, records, input_cfg, inference, max_side: int, progress: bool = True
            ) -> tuple[list[dict], int]:
    """Each of `runtimes` (name -> runtime; "fp32-dither" runs on the dithered image) at the anchors the FP32
    runtime `fp32` (its graphs from graphs_with_anchors) keeps on `records`, in one pass over the images so
    that FP32 runs once per image however many paths there are. Returns (a row per path, FP32's anchors)."""
    from tqdm import tqdm

    from export.precision_compare import drift_stats
    from export.precision_report import dithered
    from maskface.data.dataset import read_image
    from maskface.pipeline import select_candidates
    from maskface.preprocess import prepare_image

    samples = {path: {"anchors": 0, "missing": 0, "box_px": [], "box_side_px": [], "landmark_px": []}
               for path in runtimes}
    total = 0
    for record in tqdm(records, desc="anchor drift", dynamic_ncols=True, disable=not progress):
        image = read_image(record.image_path, getattr(record, "source", ""))
        prepared = prepare_image(image, input_cfg, max_side)
        reference = detect_with_anchors(fp32, prepared.image)
        kept = np.asarray(select_candidates(reference[0], reference[1], inference)).reshape(-1)
        total += len(kept)
        ref_landmarks = reference_landmarks((fp32, reference), kept) if len(kept) else None
        for path, runtime in runtimes.items():
            # the same scale as the reference: the noisy copy keeps the image's size
            x = prepare_image(dithered(image), input_cfg, max_side).image if path == "fp32-dither" else prepared.image
            got = same_anchor_drift((fp32, reference), (runtime, detect_with_anchors(runtime, x)), kept, prepared,
                                    ref_landmarks)
            for key in ("anchors", "missing"):
                samples[path][key] += got[key]
            for key in ("box_px", "box_side_px", "landmark_px"):
                samples[path][key] += got[key]
    rows = [{"path": path, "anchors": s["anchors"], "missing": s["missing"],
             "box_px": drift_stats(s["box_px"]), "landmark_px": drift_stats(s["landmark_px"]),
             "box_relative": drift_stats(np.asarray(s["box_px"]) / np.maximum(s["box_side_px"], 1.0)),
             "box_px_by_size": box_drift_by_size(s["box_px"], s["box_side_px"])}
            for path, s in samples.items()]
    return rows, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="model (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list out of {', '.join(PATHS)}")
    p.add_argument("--int8-dir", default="artifacts/onnx_int8",
                   help="export/quantize_int8.py output: detector.onnx (FP32), detector_int8.onnx, keypoint head")
    p.add_argument("--max-images", type=int, default=400, help="first N validation images (default %(default)s)")
    p.add_argument("--max-side", type=int, default=640, help="longer image side at inference (default %(default)s)")
    p.add_argument("--out", default="artifacts/anchor_drift", help="report folder (default %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from export.precision_report import checked_paths

    paths = checked_paths(p, args, PATHS)
    int8_dir = Path(args.int8_dir)
    if not (int8_dir / "detector.onnx").is_file():
        p.error(f"{int8_dir}/detector.onnx not found: run export/quantize_int8.py --out {int8_dir} first")

    from export.precision_compare import load_val_records
    from maskface.checkpoint import load_model
    from maskface.demo.weights import demo_checkpoint
    from maskface.io_utils import atomic_write_bytes, atomic_write_json
    from maskface.runtimes.ort_runtime import OrtRuntime

    model = load_model(args.checkpoint or str(demo_checkpoint()))
    inference, input_cfg = model.cfg.inference, model.cfg.input
    records = load_val_records(args.data, max_images=args.max_images)
    rows, runtimes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = graphs_with_anchors(int8_dir, "detector.onnx", "keypoint_head_portable.onnx", Path(tmp) / "fp32")
        fp32 = OrtRuntime(fp32_dir / "detector.onnx", fp32_dir / "keypoint_head_portable.onnx")
        int8_graphs = Path(tmp) / "int8"
        for path in paths:
            try:
                if path in ("int8", "int8-openvino"):
                    folder = int8_graphs if int8_graphs.is_dir() else graphs_with_anchors(
                        int8_dir, "detector_int8.onnx", "keypoint_head_portable.onnx", int8_graphs)
                    if path == "int8":
                        runtimes[path] = OrtRuntime(folder / "detector_int8.onnx", folder / "keypoint_head_portable.onnx")
                    else:
                        from maskface.runtimes.openvino_runtime import OpenVinoRuntime

                        runtimes[path] = OpenVinoRuntime(folder, "int8")
                elif path == "bf16":
                    from maskface.runtimes.openvino_runtime import OpenVinoRuntime

                    runtimes[path] = OpenVinoRuntime(fp32_dir, "bf16")
                else:
                    runtimes[path] = fp32
            except (FileNotFoundError, RuntimeError, ImportError) as exc:
                print(f"anchor_drift: {path} not run: {exc}", file=sys.stderr)
                rows.append({"path": path, "error": str(exc)})
        measured, total = measure(fp32, runtimes, records, input_cfg, inference, args.max_side,
                                  progress=not args.no_progress)
        rows += measured
    rows.sort(key=lambda r: paths.index(r["path"]))
    report = {"settings": {"checkpoint": args.checkpoint or str(demo_checkpoint()), "data": args.data,
                           "images": len(records), "score_threshold": inference.score_threshold,
                           "max_side": args.max_side, "int8_dir": str(int8_dir), "anchors": total},
              "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "anchor_drift.json", report)
    atomic_write_bytes(out / "anchor_drift.md", to_markdown(report).encode())
    print(to_markdown(report))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
