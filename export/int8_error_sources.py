"""Where the INT8 detector's drift comes from: its weights, the clipping of its activations to their
calibrated ranges, or their rounding (issue 15).

    python export/int8_error_sources.py --int8-dir artifacts/onnx_int8 --data runs/demo-data-consensus \
        [--out artifacts/int8_error_sources] [--max-images 400]
    -> OUT/error_sources.{json,md}, and OUT/<variant>/ with each variant's graphs

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
* uint16: the graph on a 16-bit grid: every activation's Quantize / Dequantize pair becomes ONNX Runtime's
  com.microsoft 16-bit pair over the same range (scale x 255 / 65535, zero point x 257), so it clips as the graph
  does and rounds 257x finer: what the drift would be if the runtimes' convolutions took 16-bit activations.
* uint16-wide: the same 16-bit grid over twice each range (scale x 2, zero point kept: both limits double), so
  it clips less and still rounds 128x finer than the graph.

--by-scope [KINDS] adds one row per part of the network (quantize_int8's sweep groups) and per variant of KINDS
(default weights+clip-unsigned): that variant inside the part alone, every other activation neither clipped nor
rounded (with int8: that part's activations quantised, as served; with uint16*: on the 16-bit grid). All variants
run in one pass over the images (export/anchor_drift.measure), so FP32 runs once per image.

Measured on the demo model (AVX2 EPYC, reduced-range graph, 400 val images, 1,411 anchors; the table in
docs/DEPLOYMENT.md 5.5): the weights alone move boxes by 0.83 px p99; clipping the unsigned activations to
their Percentile ranges takes that to 2.46 px, the signed ones to 1.47, both to 2.68, and rounding to 3.20.
By scope, the 8 unsigned activations of backbone stage 3 clipped alone take the weights' p99 to 2.37 px
(200 images), stage 2's 14 to 1.20; every other part's stay within 0.02 px of the weights alone.
On the graph with those 22 in FP32 (quantize_int8's --unclipped-fp32; its INT8 box p99 2.30 px), --by-scope
int8,weights+clip-signed (400 images, 20 variants in 31 min): each part's activations quantised alone take
the weights' 0.83 px to 0.89-1.35, the signed ones clipped alone to at most 1.11 (FPN; conv outputs into a
GroupNorm, which no conv reads): quantize_int8's --runtime openvino now keeps those FP32 as well.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

VARIANTS = ("weights", "weights+clip-unsigned", "weights+clip-signed", "weights+clip", "int8", "uint16", "uint16-wide")
#: uint16-wide's range over the graph's.
WIDE_RANGE = 2.0
#: ONNX Runtime's contrib domain, whose Quantize / DequantizeLinear take 16-bit integers at any opset.
CONTRIB_DOMAIN = "com.microsoft"
DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE = "detector.onnx", "detector_int8.onnx", "keypoint_head_portable.onnx"


def variant_graph(model, variant: str, scope: tuple[str, ...] = ()):
    """A copy of QDQ `model` with the quantisation `variant` names (module doc) taken back; with `scope`
    (tensor-name prefixes), only the activations inside it get the variant's clipping (or, for int8 and the 16-bit ones,
    stay quantised); the others are neither clipped nor rounded, as in `weights`."""
    from export.int8_mixed import activations, is_signed, keep_fp32

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} must be one of {', '.join(VARIANTS)}")
    acts = activations(model, hw=None)
    inside = {a.tensor for a in acts if not scope or a.tensor.startswith(scope)}
    if variant in ("int8", "uint16", "uint16-wide"):
        quantised = keep_fp32(model, [a.tensor for a in acts if a.tensor not in inside], clip=False)
        if variant == "int8":
            return quantised
        return on_16bit_grid(quantised, WIDE_RANGE if variant == "uint16-wide" else 1.0)
    clipped = {"weights+clip": {True, False}, "weights+clip-signed": {True}, "weights+clip-unsigned": {False},
               "weights": set()}[variant]
    keep = {a.tensor for a in acts if a.tensor in inside and is_signed(model, a) in clipped}
    unclipped = [a.tensor for a in acts if a.tensor not in keep]
    return keep_fp32(keep_fp32(model, [a.tensor for a in acts if a.tensor in keep]), unclipped, clip=False)


def on_16bit_grid(model, widen: float = 1.0):
    """A copy of QDQ `model` with each activation's UINT8 Quantize / Dequantize pair on a UINT16 grid over the same
    range: scale x 255 / 65535 and zero point x 257 give the same lowest and highest values, (0 - z) x s and
    (255 - z) x s, with 257x finer steps (the contrib domain's nodes; ONNX's own take 16 bits from opset 21).
    widen: the scale times this, the zero point kept, so both limits move out by that factor."""
    import onnx
    from onnx import helper, numpy_helper

    from export.int8_mixed import activations, drop_unused_initializers

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    for act in activations(out, hw=None):
        quantize = by_name[act.quantize]
        scale = numpy_helper.to_array(inits[quantize.input[1]]).astype(np.float64)
        zero = numpy_helper.to_array(inits[quantize.input[2]])
        if zero.dtype != np.uint8:
            raise ValueError(f"{act.quantize}: a {zero.dtype} zero point; the 16-bit grid is for UINT8 activations")
        names = [f"uint16/{act.tensor}/scale", f"uint16/{act.tensor}/zero"]
        graph.initializer.extend([numpy_helper.from_array((scale * widen * 255 / 65535).astype(np.float32), names[0]),
                                  numpy_helper.from_array((zero.astype(np.uint32) * 257).astype(np.uint16), names[1])])
        for node in (quantize, *(by_name[d] for d in act.dequantize)):
            node.domain = CONTRIB_DOMAIN
            node.input[1], node.input[2] = names
    if not any(o.domain == CONTRIB_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    drop_unused_initializers(graph)  # the UINT8 scales and zero points
    return out


def scope_variants(kinds: tuple[str, ...] = ("weights+clip-unsigned",)) -> dict[str, tuple[str, tuple[str, ...]]]:
    """--by-scope's rows: each of `kinds` (VARIANTS) in one part of the network at a time (the groups of
    quantize_int8's sweep), name -> (variant, tensor-name prefixes)."""
    from export.quantize_int8 import SWEEP_GROUPS

    return {f"{kind} in {label}": (kind, tuple(prefixes)) for kind in kinds for label, prefixes in SWEEP_GROUPS.items()}


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
             f"INT8 graphs: `{settings.get('int8_dir', '?')}`; model: `{settings.get('checkpoint', '?')}`.", "",
             "| variant | box median | box p90 | box p99 | box max | landmark p99 |", "|---|---|---|---|---|---|"]
    for row in rows:
        b, lm = row["box_px"], row["landmark_px"]
        lines.append(f"| {row['variant']} | {f(b['median'])} | {f(b['p90'])} | {f(b['p99'])} | {f(b['max'])} | "
                     f"{f(lm['p99'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import tempfile

    from export import anchor_drift
    from export.precision_compare import load_val_records
    from maskface.checkpoint import load_model
    from maskface.demo.weights import demo_checkpoint
    from maskface.io_utils import atomic_write_bytes, atomic_write_json
    from maskface.runtimes.ort_runtime import OrtRuntime

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--int8-dir", default="artifacts/onnx_int8", help="export/quantize_int8.py output folder")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--checkpoint", help="model whose graphs these are (default: the shipped demo model)")
    p.add_argument("--out", default="artifacts/int8_error_sources", help="report folder (default %(default)s)")
    p.add_argument("--max-images", type=int, default=400, help="first N validation images (default %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list out of {', '.join(VARIANTS)}")
    p.add_argument("--by-scope", nargs="?", const="weights+clip-unsigned", default="",
                   help="add a row per part of the network and per variant of this comma list (default, without a "
                        "value: weights+clip-unsigned): the variant inside that part alone")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    names, kinds = ([v for v in text.split(",") if v] for text in (args.variants, args.by_scope))
    unknown = [v for v in names + kinds if v not in VARIANTS]
    if unknown or not (names or kinds):
        p.error(f"--variants and --by-scope take comma lists out of {', '.join(VARIANTS)}; got {', '.join(unknown)}")
    variants = {v: (v, ()) for v in names} | (scope_variants(tuple(kinds)) if kinds else {})
    int8_dir, out = Path(args.int8_dir), Path(args.out)
    missing = [n for n in (DETECTOR_FILE, DETECTOR_INT8_FILE, KEYPOINT_FILE) if not (int8_dir / n).is_file()]
    if missing:
        p.error(f"{int8_dir} lacks {', '.join(missing)}: run export/quantize_int8.py --out {int8_dir} first")
    model = load_model(args.checkpoint or str(demo_checkpoint()))
    records = load_val_records(args.data, max_images=args.max_images)
    folders = write_variants(int8_dir, out, variants)
    with tempfile.TemporaryDirectory() as tmp:
        def with_anchors(folder: Path, detector: str, name: str) -> OrtRuntime:
            work = anchor_drift.graphs_with_anchors(folder, detector, KEYPOINT_FILE, Path(tmp) / name)
            return OrtRuntime(work / detector, work / KEYPOINT_FILE)

        fp32 = with_anchors(int8_dir, DETECTOR_FILE, "fp32")
        runtimes = {name: with_anchors(folder, DETECTOR_INT8_FILE, folder.name) for name, folder in folders.items()}
        print(f"int8_error_sources: {len(runtimes)} variants on {len(records)} images", file=sys.stderr)
        measured, anchors = anchor_drift.measure(fp32, runtimes, records, model.cfg.input, model.cfg.inference,
                                                 max_side=640, progress=not args.no_progress)
    rows = [{"variant": row["path"], **{k: row[k] for k in ("missing", "box_px", "landmark_px", "box_relative",
                                                              "box_px_by_size")}} for row in measured]
    settings = {"checkpoint": args.checkpoint or str(demo_checkpoint()), "data": args.data, "images": len(records),
                "anchors": anchors, "int8_dir": str(int8_dir)}
    summary = {"settings": settings, "rows": rows}
    atomic_write_json(out / "error_sources.json", summary)
    atomic_write_bytes(out / "error_sources.md", to_markdown(rows, settings).encode())
    print(to_markdown(rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
