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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskface.io_utils import atomic_write_bytes, atomic_write_json  # noqa: E402
from maskface.modeling.maskface import MaskFace  # noqa: E402
from maskface.preprocess import prepare_image  # noqa: E402

# Tolerances of the FP32 ONNX Runtime path (the tests use the same numbers).
FP32_TOLERANCE = {"scores": 1e-4, "boxes": 1e-3, "features": 1e-4, "landmarks_px": 0.05}
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


def compare(model: MaskFace, graphs, name: str, image: np.ndarray, num_rois: int = 37) -> CaseReport:
    """One input through PyTorch and through `graphs` (OnnxGraphs / TrtGraphs interface)."""
    with torch.no_grad():
        t_scores, t_boxes, t_features = model.detect_candidates(torch.from_numpy(image[None]))
    scores, boxes, features = graphs.detect(image[None])
    score_err, box_err = candidate_errors(t_scores[0].numpy(), t_boxes[0].numpy(), scores[0], boxes[0])
    names = [f"m{i + 2}" for i in range(len(features))]
    f_max = {n: float(np.abs(f - t.numpy()).max()) for n, f, t in zip(names, features, t_features)}
    f_mean = {n: float(np.abs(f - t.numpy()).mean()) for n, f, t in zip(names, features, t_features)}
    report = CaseReport(name, tuple(image.shape[1:]), score_err, box_err, f_max, f_mean, num_rois)

    # Identical ROIs for both backends: PyTorch's best candidates with a real extent.
    boxes_t = t_boxes[0]
    wide = (boxes_t[:, 2] - boxes_t[:, 0] > 1) & (boxes_t[:, 3] - boxes_t[:, 1] > 1)
    rois = torch.cat([torch.zeros(num_rois, 1), boxes_t[wide][:num_rois]], dim=1)
    report.num_rois = int(rois.shape[0])
    with torch.no_grad():
        t_points, t_point_scores, t_heatmaps = model.landmarks(t_features, rois)
    # The backends read the PyTorch features, so only the keypoint graph itself is compared.
    points, point_scores = graphs.keypoints([t.numpy() for t in t_features], rois.numpy())
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


def run_parity(model: MaskFace, graphs, backend: str, tolerance: dict | None = None, **kwargs) -> dict:
    from tqdm import tqdm

    inputs = parity_inputs(model, **kwargs)
    cases = [compare(model, graphs, name, image)
             for name, image in tqdm(inputs, desc=f"parity vs {backend}", unit="input", leave=False)]
    tol = tolerance or FP32_TOLERANCE
    worst = {
        "scores": max(c.scores_max_abs for c in cases),
        "boxes": max(c.boxes_max_abs for c in cases),
        "features": max(max(c.features_max_abs.values()) for c in cases),
        "landmarks_px": max(c.landmarks_max_abs_px for c in cases),
    }
    return {"backend": backend, "model": model.cfg.name, "tolerance": tol, "worst": worst,
            "passed": all(worst[k] <= tol[k] for k in tol), "cases": [asdict(c) for c in cases]}


def to_markdown(report: dict) -> str:
    lines = [f"# Parity: PyTorch vs {report['backend']} ({report['model']})", "",
             f"Result: **{'PASS' if report['passed'] else 'FAIL'}** (tolerances {report['tolerance']})"
             + (f"; gate: {report['gate']}" if report.get("gate") else ""), "",
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
    from maskface.serving.onnx_graphs import OnnxGraphs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx-dir", default="artifacts/onnx")
    p.add_argument("--checkpoint")
    p.add_argument("--config", default="r50")
    p.add_argument("--out", default="artifacts/parity")
    args = p.parse_args(argv)
    model, _ = load_or_init_model(args.checkpoint, args.config)
    graphs = OnnxGraphs(Path(args.onnx_dir) / DETECTOR_FILE, Path(args.onnx_dir) / KEYPOINT_PORTABLE_FILE)
    report = run_parity(model, graphs, "onnxruntime")
    paths = write_report(report, args.out)
    print(to_markdown(report))
    print(f"parity: wrote {paths[0]} and {paths[1]}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
