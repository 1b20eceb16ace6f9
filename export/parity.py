"""Parity of the exported graphs against PyTorch: ONNX Runtime always, TensorRT where present.

    python export/parity.py --onnx-dir artifacts/onnx [--checkpoint PATH] [--out artifacts/parity]

For each input (real photos shipped by scikit-image, plus seeded random images) it reports the
max / mean absolute error of the detector's candidate scores and boxes and of the five context
maps, then runs the keypoint head of both backends on IDENTICAL ROIs (PyTorch's best candidates),
so that NMS ties cannot hide differences, and reports landmark errors in pixels and as NME
(normalised by the ROI's sqrt(w*h)). Writes JSON + markdown.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch


from maskface.io_utils import atomic_write_bytes, atomic_write_json
from maskface.modeling.maskface import MaskFace
from maskface.preprocess import prepare_image

# The gate, per compared tensor: max|a - b| <= atol + rtol * max|b| (b = PyTorch's tensor), so that
# float noise may grow with the tensor's scale (a trained model's context maps reach ~1-100, where
# 1e-4 absolute is below FP32 accumulation noise) while a wrong op, off by O(scale), still fails.
# FP32 ONNX Runtime path; the tests use the same numbers.
FP32_TOLERANCE = {"scores": 1e-4, "boxes": 1e-3, "features": 1e-4, "landmarks_px": 0.05}  # atol
FP32_RTOL = {"scores": 0.0, "boxes": 1e-5, "features": 1e-3, "landmarks_px": 0.0}
# What a user can do when the gate fails (build_engines.py's options; parity.py takes --rtol).
WAY_OUT = ("if the differences are float noise, loosen the relative tolerance (build_engines.py --parity-rtol R, "
           "parity.py --rtol R) or report without gating (build_engines.py --no-parity-gate)")
# Two logits closer than this are a tie that float rounding may order either way.
PEAK_MARGIN = 1e-3


@dataclass
class CaseReport:
    name: str
    input_hw: tuple[int, int]
    scores_max_abs: float
    boxes_max_abs: float
    features_max_abs: dict[str, float]
    features_mean_abs: dict[str, float]
    num_rois: int
    scores_scale: float = 1.0  # max |PyTorch value| of each compared tensor (the rtol's reference)
    boxes_scale: float = 0.0
    features_scale: dict[str, float] = field(default_factory=dict)
    landmarks_max_abs_px: float = 0.0
    landmarks_mean_abs_px: float = 0.0
    landmarks_nme: float = 0.0
    landmark_scores_max_abs: float = 0.0
    ambiguous_peaks: int = 0  # points whose heatmap has no clear peak (excluded from the px errors)
    notes: list[str] = field(default_factory=list)


def candidate_errors(ref_scores, ref_boxes, scores, boxes, tie: float = 1e-5) -> tuple[float, float]:
    """Max |score| and |box| errors of one image's candidates, robust to near-tied scores.

    Backends may order anchors with (nearly) equal scores differently, so each candidate is
    matched to the reference candidate with the closest box among those whose score is within
    `tie`; candidates at the top-k cut-off (within `tie` of the last score) are not compared.
    """
    ref_scores, ref_boxes = np.asarray(ref_scores, np.float64), np.asarray(ref_boxes, np.float64)
    scores, boxes = np.asarray(scores, np.float64), np.asarray(boxes, np.float64)
    score_err = float(np.abs(np.sort(ref_scores) - np.sort(scores)).max()) if len(scores) else 0.0
    order = np.argsort(ref_scores)
    sorted_scores = ref_scores[order]
    cutoff = min(ref_scores.min(), scores.min()) + tie if len(scores) else 0.0
    box_err = 0.0
    for s, b in zip(scores, boxes):
        if s <= cutoff:
            continue
        lo = np.searchsorted(sorted_scores, s - tie, side="left")
        hi = np.searchsorted(sorted_scores, s + tie, side="right")
        candidates = ref_boxes[order[lo:hi]]
        if len(candidates) == 0:
            return score_err, float("inf")
        box_err = max(box_err, float(np.abs(candidates - b).max(axis=1).min()))
    return score_err, box_err


def clear_peaks(heatmaps: torch.Tensor, margin: float = PEAK_MARGIN) -> np.ndarray:
    """[N, K] bool: the heatmap's best logit beats the runner-up by more than `margin`."""
    flat = heatmaps.reshape(heatmaps.shape[0], heatmaps.shape[1], -1)
    if flat.shape[0] == 0:
        return np.zeros(heatmaps.shape[:2], bool)
    top2 = flat.topk(2, dim=2).values
    return ((top2[..., 0] - top2[..., 1]) > margin).numpy()


def compare(model: MaskFace, runtime, name: str, image: np.ndarray, num_rois: int = 37) -> CaseReport:
    """One input through the PyTorch runtime and through `runtime` (a maskface.pipeline.Runtime:
    OrtRuntime, TensorRTRuntime), stage by stage."""
    from maskface.runtimes.torch_runtime import TorchRuntime

    t_scores, t_boxes, t_features = TorchRuntime(model).detect(image[None])
    scores, boxes, features = runtime.detect(image[None])
    score_err, box_err = candidate_errors(t_scores[0].numpy(), t_boxes[0].numpy(), scores[0], boxes[0])
    names = [f"m{i + 2}" for i in range(len(features))]
    f_max = {n: float(np.abs(f - t.numpy()).max()) for n, f, t in zip(names, features, t_features)}
    f_mean = {n: float(np.abs(f - t.numpy()).mean()) for n, f, t in zip(names, features, t_features)}
    report = CaseReport(name, tuple(image.shape[1:]), score_err, box_err, f_max, f_mean, num_rois,
                        scores_scale=float(np.abs(t_scores[0].numpy()).max()),
                        boxes_scale=float(np.abs(t_boxes[0].numpy()).max()),
                        features_scale={n: float(np.abs(t.numpy()).max()) for n, t in zip(names, t_features)})

    # Identical ROIs for both backends: PyTorch's best candidates with a real extent.
    boxes_t = t_boxes[0]
    wide = (boxes_t[:, 2] - boxes_t[:, 0] > 1) & (boxes_t[:, 3] - boxes_t[:, 1] > 1)
    rois = torch.cat([torch.zeros(num_rois, 1), boxes_t[wide][:num_rois]], dim=1)
    report.num_rois = int(rois.shape[0])
    with torch.no_grad():
        t_points, t_point_scores, t_heatmaps = model.landmarks(t_features, rois)
    # The backends read the PyTorch features, so only the keypoint graph itself is compared.
    points, point_scores = runtime.keypoints([t.numpy() for t in t_features], rois.numpy())
    if report.num_rois:
        clear = clear_peaks(t_heatmaps)
        report.ambiguous_peaks = int((~clear).sum())
        err = np.abs(points - t_points.numpy()).max(axis=2)
        size = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).numpy()[:, None]
        dist = np.linalg.norm(points - t_points.numpy(), axis=2)
        if clear.any():
            report.landmarks_max_abs_px = float(err[clear].max())
            report.landmarks_mean_abs_px = float(err[clear].mean())
            report.landmarks_nme = float((dist / size)[clear].mean())
        report.landmark_scores_max_abs = float(np.abs(point_scores - t_point_scores.numpy()).max())
    return report


def parity_inputs(model: MaskFace, max_side: int = 640, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Real photos shipped by scikit-image (when installed) and seeded random images."""
    inputs = []
    try:
        from skimage import data

        for photo in ("astronaut", "coffee"):
            bgr = np.ascontiguousarray(getattr(data, photo)()[:, :, ::-1])
            inputs.append((photo, prepare_image(bgr, model.cfg.input, max_side).image))
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    inputs.append(("random_480x640", rng.standard_normal((3, 480, 640)).astype(np.float32)))
    inputs.append(("random_320x192", rng.standard_normal((3, 320, 192)).astype(np.float32)))
    return inputs


def case_checks(case: CaseReport, tolerance: dict, rtol: dict) -> list[dict]:
    """One check per compared tensor of a case: metric, tensor, max |a - b|, scale, allowed, passed."""
    tensors = [("scores", "scores", case.scores_max_abs, case.scores_scale),
               ("boxes", "boxes", case.boxes_max_abs, case.boxes_scale)]
    tensors += [("features", n, case.features_max_abs[n], case.features_scale.get(n, 0.0)) for n in case.features_max_abs]
    tensors.append(("landmarks_px", "landmarks", case.landmarks_max_abs_px, 0.0))
    checks = []
    for metric, tensor, err, scale in tensors:
        if metric not in tolerance:
            continue
        allowed = tolerance[metric] + rtol.get(metric, 0.0) * scale
        checks.append({"case": case.name, "metric": metric, "tensor": tensor, "max_abs": err, "scale": scale,
                       "atol": tolerance[metric], "rtol": rtol.get(metric, 0.0), "allowed": allowed,
                       "passed": bool(err <= allowed)})
    return checks


def describe_failure(check: dict) -> str:
    return (f"{check['metric']} ({check['tensor']}, input {check['case']}): max|diff| {check['max_abs']:.2e} > "
            f"allowed {check['atol']:.1e} + {check['rtol']:.1e} x scale {check['scale']:.3g} = {check['allowed']:.2e}")


def failure_message(report: dict) -> str:
    """Which tensor failed, by how much, and what to do (empty when the report passed)."""
    failed = report.get("failed", [])
    if not failed:
        return ""
    lines = [f"parity vs {report['backend']} FAILED on {len(failed)} tensor(s):"]
    lines += [f"  {describe_failure(c)}" for c in failed[:10]]
    return "\n".join(lines + [f"  {WAY_OUT}"])


def run_parity(model: MaskFace, runtime, backend: str, tolerance: dict | None = None, rtol: dict | None = None,
               **kwargs) -> dict:
    """Compare every input; the gate is per tensor (see FP32_TOLERANCE / FP32_RTOL)."""
    from tqdm import tqdm

    inputs = parity_inputs(model, **kwargs)
    cases = [compare(model, runtime, name, image)
             for name, image in tqdm(inputs, desc=f"parity vs {backend}", unit="input", leave=False)]
    return summarise(cases, backend, model.cfg.name, tolerance, rtol)


def summarise(cases: list[CaseReport], backend: str, model_name: str, tolerance: dict | None = None,
              rtol: dict | None = None) -> dict:
    tol = dict(tolerance or FP32_TOLERANCE)
    rel = dict(FP32_RTOL if rtol is None else rtol)
    worst = {
        "scores": max(c.scores_max_abs for c in cases),
        "boxes": max(c.boxes_max_abs for c in cases),
        "features": max(max(c.features_max_abs.values()) for c in cases),
        "landmarks_px": max(c.landmarks_max_abs_px for c in cases),
    }
    checks = [check for c in cases for check in case_checks(c, tol, rel)]
    failed = [c for c in checks if not c["passed"]]
    return {"backend": backend, "model": model_name, "tolerance": tol, "rtol": rel,
            "rule": "max|a - b| <= atol + rtol * max|b| per tensor", "worst": worst,
            "passed": not failed, "failed": failed, "cases": [asdict(c) for c in cases]}


def to_markdown(report: dict) -> str:
    lines = [f"# Parity: PyTorch vs {report['backend']} ({report['model']})", "",
             f"Result: **{'PASS' if report['passed'] else 'FAIL'}** (per tensor: max|a - b| <= atol + rtol x max|b|; "
             f"atol {report['tolerance']}, rtol {report.get('rtol', {})})"
             + (f"; gate: {report['gate']}" if report.get("gate") else ""), "",
             *([f"- failed: {describe_failure(c)}" for c in report.get("failed", [])[:10]]
               + [f"- {WAY_OUT}", ""] if report.get("failed") else []),
             "| input | H x W | scores max | boxes max (px) | features max | features mean | ROIs | landmarks max (px) | landmarks mean (px) | NME | landmark scores max | ambiguous peaks |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in report["cases"]:
        lines.append(
            f"| {c['name']} | {c['input_hw'][0]} x {c['input_hw'][1]} | {c['scores_max_abs']:.2e} | {c['boxes_max_abs']:.2e} | "
            f"{max(c['features_max_abs'].values()):.2e} | {max(c['features_mean_abs'].values()):.2e} | {c['num_rois']} | "
            f"{c['landmarks_max_abs_px']:.2e} | {c['landmarks_mean_abs_px']:.2e} | {c['landmarks_nme']:.2e} | "
            f"{c['landmark_scores_max_abs']:.2e} | {c['ambiguous_peaks']} |")
    lines += ["", "Boxes are matched across near-tied scores (|Δscore| ≤ 1e-5); landmark errors exclude points "
              f"whose heatmap has no clear peak (top-2 logit gap ≤ {PEAK_MARGIN})."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    stem = f"parity_{report['backend']}"
    atomic_write_json(out / f"{stem}.json", report)
    atomic_write_bytes(out / f"{stem}.md", to_markdown(report).encode())
    return out / f"{stem}.json", out / f"{stem}.md"


def main(argv: list[str] | None = None) -> int:
    from export.export_onnx import DETECTOR_FILE, KEYPOINT_PORTABLE_FILE, load_or_init_model
    from maskface.runtimes.ort_runtime import OrtRuntime

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx-dir", default="artifacts/onnx")
    p.add_argument("--checkpoint", help="the model the graphs were exported from (default: the shipped demo model, "
                   "as export/build_engines.py uses)")
    p.add_argument("--config", default=None, help="a seeded, untrained preset instead (r50, mbv2, ...)")
    p.add_argument("--random-init", action="store_true", help="seeded untrained weights of --config (default r50)")
    p.add_argument("--out", default="artifacts/parity")
    p.add_argument("--rtol", type=float, default=None,
                   help=f"relative tolerance of every tensor with one (default: {FP32_RTOL})")
    args = p.parse_args(argv)
    from maskface.demo.weights import default_checkpoint

    model, _ = load_or_init_model(default_checkpoint(args.checkpoint, args.config, args.random_init),
                                  args.config or "r50")
    runtime = OrtRuntime(Path(args.onnx_dir) / DETECTOR_FILE, Path(args.onnx_dir) / KEYPOINT_PORTABLE_FILE)
    report = run_parity(model, runtime, "onnxruntime", rtol=with_rtol(FP32_RTOL, args.rtol))
    paths = write_report(report, args.out)
    print(to_markdown(report))
    print(f"parity: wrote {paths[0]} and {paths[1]}")
    if not report["passed"]:
        print(failure_message(report), file=sys.stderr)
    return 0 if report["passed"] else 1


def with_rtol(rtol: dict, value: float | None) -> dict:
    """`rtol` with every non-zero entry set to `value` (None: unchanged)."""
    if value is None:
        return dict(rtol)
    if value < 0:
        raise ValueError(f"a relative tolerance must be >= 0, got {value}")
    return {k: (value if v else 0.0) for k, v in rtol.items()}


if __name__ == "__main__":
    sys.exit(main())
