"""Every reduced-precision path of a model against its FP32 reference on the demo validation split.

    python export/precision_report.py [--checkpoint PATH] [--data runs/demo-data] [--paths fp16,int8,bf16]
        [--int8-dir artifacts/onnx_int8] [--max-images 400] [--out artifacts/precision]

Reference: the PyTorch FP32 model (maskface.engine.predictor.Predictor). Paths:
- fp16: the FP16 graphs export/build_engines.py gives TensorRT (export/fp16.py), run by ONNX Runtime on
  the CPU with every FP16 activation STORED in FP16 (fp16.emulate_fp16_storage; arithmetic inside an op
  is FP32, as TensorRT's FP16 convolutions accumulate in FP32). A stand-in for the engines where no GPU
  is at hand: it shows what FP16 storage costs, not TensorRT's kernels.
- int8: the calibrated graphs of export/quantize_int8.py in ONNX Runtime (--int8-dir).
- int8-openvino: the same INT8 detector in OpenVINO (its floating-point layers in BF16 where the CPU
  has it natively, else FP32: openvino_runtime.inference_hint), the keypoint head in ONNX Runtime
  (maskface.runtimes.openvino_runtime; the cpu target's int8).
- bf16: the FP32 detector in OpenVINO with its BF16 inference hint, the FP32 keypoint head in ONNX
  Runtime (the cpu target's bf16), only where the CPU has native BF16.
- bf16-torch: maskface.runtimes.bf16_runtime (PyTorch autocast), only where the CPU has native BF16.
- fp32-dither: the FP32 reference itself on each image plus seeded noise of +-1 grey level (DitheredInput):
  not a precision, the drift floor. A path with this much drift is as close to FP32 as FP32 is to
  itself under an input change far below JPEG's.
Per path (export/precision_compare.py): recall / false positives per image / NME against the teacher
labels, and box / landmark drift against FP32 (max, p99). Writes OUT/<path>.{json,md,_drift_cdf.png}
and OUT/summary.{json,md}. FP32 outputs are computed once and reused for every path.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from export.precision_compare import compare_paths, load_val_records, write_report

PATHS = ("fp16", "int8", "int8-openvino", "bf16", "bf16-torch", "fp32-dither")
#: Drift bounds per path: INT8's are issue #15's; FP16 / BF16 are held to the same 1 px (reported, not gated).
GOALS = {"p99_box_drift_px": 1.0, "p99_landmark_drift_px": 1.0, "max_recall_loss": 0.0}


class ReusedOutputs:
    """A pipeline whose outputs are computed once per image (keyed by the image's bytes) and reused."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.inference = pipeline.inference
        self.cache: dict[int, dict] = {}

    def __call__(self, image):
        key = hash(image.tobytes())
        if key not in self.cache:
            self.cache[key] = self.pipeline(image)
        return self.cache[key]


def dithered(image: np.ndarray, levels: int = 1, seed: int = 0) -> np.ndarray:
    """A copy of a uint8 image with uniform integer noise in [-levels, levels] per pixel and channel,
    clipped to 0..255. The noise is seeded by `seed` and the image's bytes, so every run and every path
    sees the same noisy copy."""
    if levels < 1:
        raise ValueError(f"dither levels must be >= 1, got {levels}")
    rng = np.random.default_rng([seed, zlib.crc32(image.tobytes())])
    noise = rng.integers(-levels, levels + 1, size=image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


class DitheredInput:
    """`pipeline` on the dithered copy of each image (`dithered`)."""

    def __init__(self, pipeline, levels: int = 1, seed: int = 0):
        if levels < 1:
            raise ValueError(f"dither levels must be >= 1, got {levels}")
        self.pipeline, self.levels, self.seed = pipeline, levels, seed
        self.inference = pipeline.inference

    def noisy(self, image: np.ndarray) -> np.ndarray:
        return dithered(image, self.levels, self.seed)

    def __call__(self, image: np.ndarray):
        return self.pipeline(self.noisy(image))


def fp16_storage_predictor(model, work_dir: Path, max_side: int):
    """OnnxPredictor on the FP16 graphs with FP16 activation storage (module docstring)."""
    import onnx

    from export.fp16 import Fp16Policy, convert_to_fp16, emulate_fp16_storage
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime

    fp32_dir = export_fp32_graphs(model, work_dir)
    paths = {}
    for name in ("detector", "keypoint_head_portable"):
        fp16, _ = convert_to_fp16(onnx.load(str(fp32_dir / f"{name}.onnx")), Fp16Policy())
        paths[name] = work_dir / f"{name}_fp16_storage.onnx"
        onnx.save(emulate_fp16_storage(fp16), str(paths[name]))
    # optimisations off: they would remove the Identities that store each activation in FP16
    runtime = OrtRuntime(paths["detector"], paths["keypoint_head_portable"], optimize=False)
    return OnnxPredictor(runtime, model.cfg.inference, model.cfg.input, max_side=max_side)


def export_fp32_graphs(model, work_dir: Path) -> Path:
    """detector.onnx + keypoint_head_portable.onnx of `model` in work_dir/fp32 (exported once)."""
    from export.export_onnx import export_detector, export_keypoint_head

    folder = work_dir / "fp32"
    if not (folder / "keypoint_head_portable.onnx").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        export_detector(model, folder / "detector.onnx")
        export_keypoint_head(model, folder / "keypoint_head_portable.onnx", portable=True)
    return folder


def int8_predictor(model, int8_dir: Path, max_side: int):
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime, graph_paths

    detector, keypoints = graph_paths(int8_dir, "int8")
    return OnnxPredictor(OrtRuntime(detector, keypoints), model.cfg.inference, model.cfg.input, max_side=max_side)


def openvino_predictor(model, graphs_dir: Path, precision: str, max_side: int):
    from maskface.runtimes.openvino_runtime import OpenVinoPredictor, OpenVinoRuntime

    return OpenVinoPredictor(OpenVinoRuntime(graphs_dir, precision), model.cfg.inference, model.cfg.input,
                             max_side=max_side)


def bf16_torch_predictor(model, max_side: int):
    from maskface.runtimes.bf16_runtime import Bf16Predictor, require_cpu_bf16

    require_cpu_bf16()
    return Bf16Predictor(model, max_side=max_side)


def summary_markdown(rows: list[dict], settings: dict) -> str:
    lines = ["# Reduced-precision paths vs FP32 (demo validation split, teacher labels)", "",
             f"- model: {settings['checkpoint']}; {settings['images']} images; score threshold "
             f"{settings['score_threshold']:g}; faces >= 20 px; pairs at IoU >= 0.5", "",
             "| path | what runs | recall | FP / image | NME | box drift max / p99 (px) | landmark drift max / p99 (px) "
             "| lost / added | p99 <= 1 px and no recall lost |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | {r['what']} | not run: {r['error']} | | | | | | |")
            continue
        m, d = r["report"]["paths"][r["path"]], r["report"]["drift"]
        ok = all(g["passed"] for g in r["report"]["goals"])
        lines.append(f"| {r['path']} | {r['what']} | {f(m['recall'], 4)} | {f(m['fp_per_image'])} | "
                     f"{f(m['nme_mean'], 4)} | {f(d['box_px']['max'])} / {f(d['box_px']['p99'])} | "
                     f"{f(d['landmark_px']['max'])} / {f(d['landmark_px']['p99'])} | {d['lost']} / {d['added']} | "
                     f"{'yes' if ok else 'NO'} |")
    done = [r for r in rows if "report" in r]
    if done:
        ref = done[0]["report"]["paths"]["fp32"]
        lines += ["", f"FP32 reference: recall {ref['recall']:.4f}, FP / image {ref['fp_per_image']:.3f}, "
                      f"NME {f(ref['nme_mean'], 4)} ({ref['nme_faces']} faces)."]
    return "\n".join(lines) + "\n"


WHAT = {"fp16": "FP16 graphs in ONNX Runtime CPU, activations stored FP16 (stand-in for TensorRT FP16)",
        "int8": "static INT8 QDQ graphs in ONNX Runtime (export/quantize_int8.py)",
        "int8-openvino": "the same INT8 detector in OpenVINO (its other layers in BF16 where the CPU has it "
                         "natively, else FP32), keypoint head in ONNX Runtime (the served int8)",
        "bf16": "FP32 detector in OpenVINO with its BF16 hint, FP32 keypoint head in ONNX Runtime (the served bf16)",
        "bf16-torch": "PyTorch BF16 autocast (maskface.runtimes.bf16_runtime)",
        "fp32-dither": "the FP32 reference on each image + seeded +-1 grey-level noise: FP32's own drift floor"}


def checked_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, choices: Sequence[str]) -> list[str]:
    """args.paths as a list; an unknown path, or args.data without the demo validation split, is a
    parser error saying what to do."""
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = sorted(set(paths) - set(choices))
    if unknown:
        parser.error(f"unknown --paths {unknown}; choose from {', '.join(choices)}")
    if not (Path(args.data) / "val" / "label.txt").is_file():
        parser.error(f"{args.data}/val/label.txt not found: build the demo data first (maskface demo-data --out {args.data})")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="model (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list out of {', '.join(PATHS)}")
    p.add_argument("--int8-dir", default="artifacts/onnx_int8", help="export/quantize_int8.py output (int8 path)")
    p.add_argument("--max-images", type=int, default=400, help="first N validation images (default %(default)s)")
    p.add_argument("--max-side", type=int, default=640, help="longer image side at inference (default %(default)s)")
    p.add_argument("--out", default="artifacts/precision", help="report folder (default %(default)s)")
    args = p.parse_args(argv)
    paths = checked_paths(p, args, PATHS)

    from maskface.checkpoint import load_model
    from maskface.demo.weights import demo_checkpoint
    from maskface.engine.predictor import Predictor
    from maskface.io_utils import atomic_write_bytes, atomic_write_json

    checkpoint = args.checkpoint or str(demo_checkpoint())
    model = load_model(checkpoint)
    records = load_val_records(args.data, max_images=args.max_images)
    reference = ReusedOutputs(Predictor(model, max_side=args.max_side))
    out = Path(args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            try:
                if path == "fp16":
                    candidate = fp16_storage_predictor(model, Path(tmp), args.max_side)
                elif path == "int8":
                    candidate = int8_predictor(model, Path(args.int8_dir), args.max_side)
                elif path == "int8-openvino":
                    candidate = openvino_predictor(model, Path(args.int8_dir), "int8", args.max_side)
                elif path == "fp32-dither":
                    candidate = DitheredInput(Predictor(model, max_side=args.max_side))
                elif path == "bf16":
                    candidate = openvino_predictor(model, export_fp32_graphs(model, Path(tmp)), "bf16", args.max_side)
                else:
                    candidate = bf16_torch_predictor(model, args.max_side)
            except (FileNotFoundError, RuntimeError, ImportError) as exc:
                print(f"precision_report: {path} not run: {exc}", file=sys.stderr)
                rows.append({"path": path, "what": WHAT[path], "error": str(exc)})
                continue
            report = compare_paths(reference, candidate, records, names=("fp32", path), goals=GOALS)
            report["extra"] = {"checkpoint": checkpoint, "what": WHAT[path], "max_side": args.max_side}
            json_path, md_path, _ = write_report(report, out, name=path)
            print(f"precision_report: {path}: {md_path}")
            rows.append({"path": path, "what": WHAT[path], "report": report})
    settings = {"checkpoint": checkpoint, "images": len(records), "score_threshold": model.cfg.inference.score_threshold,
                "max_side": args.max_side, "data": args.data}
    summary = [{k: v for k, v in r.items() if k != "report"} | (
        {"paths": r["report"]["paths"], "drift": r["report"]["drift"], "goals": r["report"]["goals"]}
        if "report" in r else {}) for r in rows]
    atomic_write_json(out / "summary.json", {"settings": settings, "rows": summary})
    atomic_write_bytes(out / "summary.md", summary_markdown(rows, settings).encode())
    print(summary_markdown(rows, settings))
    return 0 if all("report" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
