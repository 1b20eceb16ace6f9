"""Where the INT8 detector's drift comes from: its weights, the clipping of its activations to their
calibrated ranges, or their rounding (issue 15).

    python export/int8_error_sources.py --int8-dir artifacts/onnx_int8 --data runs/demo-data-consensus \
        [--out artifacts/int8_error_sources] [--max-images 400]
    -> OUT/error_sources.{json,md}, and OUT/<variant>/ with each variant's graphs and anchor_drift report

Each variant takes part of the quantisation back out of detector_int8.onnx and is measured at FP32's own
anchors (export/anchor_drift.py, ONNX Runtime; box median / p90 / p99, landmark p99):

* weights: the INT8 weights alone. Every activation's Quantize -> Dequantize pair is removed; where the
  pair's range starts at 0 the quantiser had folded a Relu into it, and a Relu takes its place.
* weights + clip unsigned: as weights, but the activations whose range starts at 0 (after a Relu) are
  clipped to their calibrated range, unrounded (export/int8_mixed.keep_fp32's Clip).
* weights + clip signed: the same for the activations whose range holds negative values (conv outputs
  before a GroupNorm or a residual Add).
* weights + clip: every activation clipped to its range, none rounded (keep_fp32 of all of them).
* int8: the graph itself (rounding too).

--by-scope adds one row per part of the network (quantize_int8's sweep groups): the weights, and the unsigned
activations of that part alone clipped.

Measured on the demo model (AVX2 EPYC, reduced-range graph, 400 val images, 1,411 anchors; the table in
docs/DEPLOYMENT.md 5.5): the weights alone move boxes by 0.83 px p99; clipping the unsigned activations to
their Percentile ranges takes that to 2.46 px, the signed ones to 1.47, both to 2.68, and rounding to 3.20.
By scope, the 8 unsigned activations of backbone stage 3 clipped alone take the weights' p99 to 2.37 px
(200 images), stage 2's 14 to 1.20; every other part's stay within 0.02 px of the weights alone.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

VARIANTS = ("weights", "weights+clip-unsigned", "weights+clip-signed", "weights+clip", "int8")
DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE = "detector.onnx", "detector_int8.onnx", "keypoint_head_portable.onnx"


def variant_graph(model, variant: str, scope: tuple[str, ...] = ()):
    """A copy of QDQ `model` with the quantisation `variant` names (module doc) taken back; with `scope`
    (tensor-name prefixes), a clipping variant clips only the activations inside it."""
    from export.int8_mixed import activations, is_signed, keep_fp32

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} must be one of {', '.join(VARIANTS)}")
    if variant == "int8":
        out = type(model)()
        out.CopyFrom(model)
        return out
    acts = activations(model, hw=None)
    clipped = {"weights+clip": {True, False}, "weights+clip-signed": {True}, "weights+clip-unsigned": {False},
               "weights": set()}[variant]
    keep = {a.tensor for a in acts if is_signed(model, a) in clipped and (not scope or a.tensor.startswith(scope))}
    unclipped = [a.tensor for a in acts if a.tensor not in keep]
    return keep_fp32(keep_fp32(model, [a.tensor for a in acts if a.tensor in keep]), unclipped, clip=False)


def scope_variants() -> dict[str, tuple[str, tuple[str, ...]]]:
    """--by-scope's rows: the unsigned activations clipped in one part of the network at a time (the groups of
    quantize_int8's sweep), name -> (variant, tensor-name prefixes)."""
    from export.quantize_int8 import SWEEP_GROUPS

    return {f"weights+clip-unsigned in {label}": ("weights+clip-unsigned", tuple(prefixes))
            for label, prefixes in SWEEP_GROUPS.items()}


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "+-" else "_" for c in name)


def write_variants(int8_dir: Path, out: Path, variants: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, Path]:
    """OUT/<name>/ with each variant (name -> (variant, scope)) as detector_int8.onnx beside int8_dir's FP32 graphs."""
    import onnx

    model = onnx.load(str(int8_dir / DETECTOR_INT8_FILE))
    folders = {}
    for name, (variant, scope) in variants.items():
        folder = out / folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(variant_graph(model, variant, scope), str(folder / DETECTOR_INT8_FILE))
        for graph in (DETECTOR_FILE, KEYPOINT_FILE):
            shutil.copy2(int8_dir / graph, folder / graph)
        folders[name] = folder
    return folders


def to_markdown(rows: list[dict], settings: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [f"# Where the INT8 drift comes from ({settings['images']} images, {settings['anchors']} FP32 anchors)", "",
             "Each variant takes part of the quantisation back out of the INT8 detector (export/int8_error_sources.py); "
             "drift at FP32's own anchors in ONNX Runtime, original pixels.", "",
             "| variant | box median | box p90 | box p99 | box max | landmark p99 |", "|---|---|---|---|---|---|"]
    for row in rows:
        b, lm = row["box_px"], row["landmark_px"]
        lines.append(f"| {row['variant']} | {f(b['median'])} | {f(b['p90'])} | {f(b['p99'])} | {f(b['max'])} | "
                     f"{f(lm['p99'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from export import anchor_drift
    from maskface.io_utils import atomic_write_bytes, atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--int8-dir", default="artifacts/onnx_int8", help="export/quantize_int8.py output folder")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--checkpoint", help="model whose graphs these are (default: the shipped demo model)")
    p.add_argument("--out", default="artifacts/int8_error_sources", help="report folder (default %(default)s)")
    p.add_argument("--max-images", type=int, default=400, help="first N validation images (default %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list out of {', '.join(VARIANTS)}")
    p.add_argument("--by-scope", action="store_true",
                   help="add a row per part of the network: its unsigned activations alone clipped")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        p.error(f"--variants takes a comma list out of {', '.join(VARIANTS)}; got {args.variants!r}")
    variants = {v: (v, ()) for v in names} | (scope_variants() if args.by_scope else {})
    int8_dir, out = Path(args.int8_dir), Path(args.out)
    missing = [n for n in (DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE) if not (int8_dir / n).is_file()]
    if missing:
        p.error(f"{int8_dir} lacks {', '.join(missing)}: run export/quantize_int8.py --out {int8_dir} first")
    rows, settings = [], {}
    for variant, folder in write_variants(int8_dir, out, variants).items():
        print(f"int8_error_sources: {variant}", file=sys.stderr)
        drift_args = ["--int8-dir", str(folder), "--data", args.data, "--paths", "int8", "--out", str(folder),
                      "--max-images", str(args.max_images)] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        if anchor_drift.main(drift_args + (["--no-progress"] if args.no_progress else [])) != 0:
            print(f"int8_error_sources: anchor_drift failed on {folder}", file=sys.stderr)
            return 1
        report = json.loads((folder / "anchor_drift.json").read_text())
        settings = report["settings"]
        (row,) = report["rows"]
        rows.append({"variant": variant, **{k: row[k] for k in ("missing", "box_px", "landmark_px", "box_relative",
                                                                 "box_px_by_size")}})
    summary = {"settings": {**settings, "int8_dir": str(int8_dir)}, "rows": rows}
    atomic_write_json(out / "error_sources.json", summary)
    atomic_write_bytes(out / "error_sources.md", to_markdown(rows, settings).encode())
    print(to_markdown(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
