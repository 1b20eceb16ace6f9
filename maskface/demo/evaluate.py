"""`maskface demo-eval`: the demo model against its teacher's labels on the held-out split.

Detection, per image: detections (score >= 0.02) are taken in score order and matched greedily
to the unmatched ground-truth face of highest IoU >= 0.5. A match with a face whose long side is
at least `min_face` px (default 20) is a true positive; a match with a smaller face is ignored
(neither TP nor FP: the target is defined for faces >= 20 px); every other detection is a false
positive. Pooled over the split this gives the precision-recall curve, recall and false
positives per image at the model's default threshold, and the best recall at <= 0.3 false
positives per image.

Landmarks: for true positives at the default threshold whose face has teacher landmarks, the
5-point NME normalised by the inter-ocular distance (maskface.evaluation.landmarks), with CED.
Outputs metrics.json, metrics.md, pr.png, recall_fppi.png and ced.png.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE_BUCKETS = ((20, 64), (64, 224), (224, 1e9))
# |yaw proxy| buckets: frontal, turned, near profile (see yaw_proxy)
POSE_BUCKETS = ((0.0, 0.15), (0.15, 0.35), (0.35, 1e9))


def yaw_proxy(landmarks: np.ndarray) -> np.ndarray:
    """Horizontal offset of the nose from the eyes' midpoint over the inter-ocular distance, per face
    ([N, 5, 2] in the RetinaFace order: eyes, nose, mouth corners). About 0 for a frontal face and
    growing as the head turns (~0.5 near profile); the teacher's landmarks give the pose labels."""
    eyes_mid = (landmarks[:, 0] + landmarks[:, 1]) / 2
    inter = np.linalg.norm(landmarks[:, 1] - landmarks[:, 0], axis=1)
    return (landmarks[:, 2, 0] - eyes_mid[:, 0]) / np.maximum(inter, 1e-6)


def occlude_lower_half(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """A copy with the lower half of every face box painted mid grey: a mask-like occlusion probe."""
    out = image.copy()
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        top, bottom = int(round((y1 + y2) / 2)), int(round(y2))
        left, right = int(round(x1)), int(round(x2))
        out[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = 128
    return out


@dataclass
class Matched:
    scores: np.ndarray  # [D] all detections of the split
    is_tp: np.ndarray  # [D] bool
    is_ignored: np.ndarray  # [D] bool (matched a face below min_face)
    num_faces: int  # faces >= min_face
    num_images: int


def match_image(gt_boxes: np.ndarray, boxes: np.ndarray, scores: np.ndarray, min_face: float,
                iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_tp [D], is_ignored [D], matched_gt [D] or -1) for one image, detections in any order."""
    from ..evaluation.ap import box_iou

    d = len(scores)
    is_tp, ignored, matched = np.zeros(d, bool), np.zeros(d, bool), np.full(d, -1)
    if d == 0 or len(gt_boxes) == 0:
        return is_tp, ignored, matched
    iou = box_iou(boxes, gt_boxes)  # [D, G]
    big = np.maximum(gt_boxes[:, 2] - gt_boxes[:, 0], gt_boxes[:, 3] - gt_boxes[:, 1]) >= min_face
    taken = np.zeros(len(gt_boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(cand.argmax())
        if cand[j] >= iou_threshold:
            taken[j] = True
            matched[i] = j
            is_tp[i], ignored[i] = big[j], not big[j]
    return is_tp, ignored, matched


def sweep(m: Matched):
    """Score-sorted cumulative (threshold, recall, precision, fp_per_image)."""
    keep = ~m.is_ignored
    order = np.argsort(-m.scores[keep], kind="stable")
    s, tp = m.scores[keep][order], m.is_tp[keep][order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = ctp / max(1, m.num_faces)
    precision = ctp / np.maximum(1, ctp + cfp)
    return s, recall, precision, cfp / max(1, m.num_images)


def at_threshold(m: Matched, threshold: float) -> dict:
    keep = (m.scores >= threshold) & ~m.is_ignored
    tp = int((m.is_tp & keep).sum())
    fp = int((~m.is_tp & keep).sum())
    return {"threshold": threshold, "recall": tp / max(1, m.num_faces), "fp_per_image": fp / max(1, m.num_images),
            "tp": tp, "fp": fp}


def best_recall_at_fppi(m: Matched, fppi: float) -> dict:
    s, recall, _, fp_img = sweep(m)
    ok = fp_img <= fppi
    if not ok.any():
        return {"fppi": fppi, "recall": 0.0, "threshold": None}
    i = int(np.flatnonzero(ok)[-1])
    return {"fppi": fppi, "recall": float(recall[i]), "threshold": float(s[i])}


def _bucket_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{'inf' if hi >= 1e8 else f'{hi:g}'}"


def evaluate_split(predictor, records, min_face: float = 20.0, progress: bool = True,
                   transform=None) -> dict:
    """`transform(image, boxes)` alters each image before inference (e.g. occlude_lower_half)."""
    from tqdm import tqdm

    from ..data.dataset import read_image
    from ..evaluation.ap import voc_ap
    from ..evaluation.landmarks import interocular_normaliser, nme_per_face

    threshold = predictor.model.cfg.inference.score_threshold
    scores, tps, ign = [], [], []
    nme, nme_size = [], []
    per_bucket = {b: [0, 0] for b in SIZE_BUCKETS}  # found at threshold, total
    per_pose = {b: [0, 0] for b in POSE_BUCKETS}  # faces >= min_face with all five teacher landmarks
    num_faces = 0
    saved = predictor.model.cfg.inference.score_threshold
    predictor.model.cfg.inference.score_threshold = 0.02
    try:
        for rec in tqdm(records, desc="demo-eval", dynamic_ncols=True, disable=not progress):
            gt = rec.boxes.astype(np.float64)
            image = read_image(rec.image_path)
            out = predictor(image if transform is None else transform(image, gt))
            is_tp, ignored, matched = match_image(gt, out["boxes"], out["scores"], min_face)
            scores.append(out["scores"])
            tps.append(is_tp)
            ign.append(ignored)
            side = np.maximum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]) if len(gt) else np.zeros(0)
            num_faces += int((side >= min_face).sum())
            found = np.zeros(len(gt), bool)
            sel = is_tp & (out["scores"] >= threshold)
            found[matched[sel]] = True
            for lo, hi in SIZE_BUCKETS:
                inb = (side >= lo) & (side < hi)
                per_bucket[(lo, hi)][0] += int((found & inb).sum())
                per_bucket[(lo, hi)][1] += int(inb.sum())
            posed = rec.landmark_valid.all(axis=1) & (side >= min_face) if len(gt) else np.zeros(0, bool)
            if posed.any():
                yaw = np.abs(yaw_proxy(rec.landmarks[posed].astype(np.float64)))
                for lo, hi in POSE_BUCKETS:
                    inb = (yaw >= lo) & (yaw < hi)
                    per_pose[(lo, hi)][0] += int((found[posed] & inb).sum())
                    per_pose[(lo, hi)][1] += int(inb.sum())
            det = np.flatnonzero(sel)
            if len(det):
                g = matched[det]
                valid = rec.landmark_valid[g]
                has = valid.all(axis=1)
                if has.any():
                    gl = rec.landmarks[g][has]
                    e = nme_per_face(out["landmarks"][det][has], gl, interocular_normaliser(gl))
                    nme.extend(e.tolist())
                    nme_size.extend(side[g][has].tolist())
    finally:
        predictor.model.cfg.inference.score_threshold = saved
    m = Matched(np.concatenate(scores) if scores else np.zeros(0), np.concatenate(tps) if tps else np.zeros(0, bool),
                np.concatenate(ign) if ign else np.zeros(0, bool), num_faces, len(records))
    s, recall, precision, fp_img = sweep(m)
    finite = np.isfinite(np.asarray(nme, dtype=np.float64))
    nme_arr = np.asarray(nme, dtype=np.float64)[finite]
    nme_side = np.asarray(nme_size, dtype=np.float64)[finite]
    return {
        "matched": m,
        "curve": {"score": s, "recall": recall, "precision": precision, "fp_per_image": fp_img},
        "nme": nme_arr,
        "metrics": {
            "images": len(records), "faces_ge_min": num_faces, "min_face_px": min_face,
            "ap50": float(voc_ap(recall, precision)) if len(s) else 0.0,
            "at_default_threshold": at_threshold(m, threshold),
            "best_recall_at_0.3_fppi": best_recall_at_fppi(m, 0.3),
            "recall_by_size_at_default": {f"{lo}-{int(hi) if hi < 1e8 else 'inf'}": (f / t if t else None)
                                          for (lo, hi), (f, t) in per_bucket.items()},
            "faces_by_size": {f"{lo}-{int(hi) if hi < 1e8 else 'inf'}": t for (lo, hi), (_, t) in per_bucket.items()},
            "recall_by_yaw_at_default": {_bucket_name(lo, hi): (f / t if t else None)
                                         for (lo, hi), (f, t) in per_pose.items()},
            "faces_by_yaw": {_bucket_name(lo, hi): t for (lo, hi), (_, t) in per_pose.items()},
            "nme_interocular": {**_nme_summary(nme_arr),
                                "p90": float(np.percentile(nme_arr, 90)) if nme_arr.size else None},
            # Inter-ocular NME asks sub-pixel accuracy of small faces: where the error lives.
            "nme_by_size": {f"{lo}-{int(hi) if hi < 1e8 else 'inf'}": _nme_summary(nme_arr[(nme_side >= lo) & (nme_side < hi)])
                            for lo, hi in SIZE_BUCKETS},
        },
    }


def _nme_summary(values: np.ndarray) -> dict:
    return {"faces": int(values.size), "mean": float(values.mean()) if values.size else None,
            "median": float(np.median(values)) if values.size else None}


def plot_recall_fppi(curve: dict, out: Path, target_fppi: float = 0.3) -> Path:
    from ..evaluation.plots import _new_figure, _save

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["fp_per_image"], curve["recall"], lw=2)
    ax.axvline(target_fppi, color="grey", ls="--", label=f"{target_fppi} false positives / image")
    ax.axhline(0.95, color="tab:red", ls=":", label="recall 0.95 (target)")
    ax.set_xlim(0, max(1.0, 2 * target_fppi))
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positives per image")
    ax.set_ylabel("Recall (faces >= 20 px)")
    ax.set_title("Demo model vs teacher labels (held-out split)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out)


def write_report(result: dict, out_dir: Path, extra: dict | None = None) -> dict:
    from ..evaluation.plots import plot_ced_curves, plot_pr_curves
    from ..io_utils import atomic_write_bytes, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    c = result["curve"]
    metrics = {**(extra or {}), **result["metrics"]}
    plot_pr_curves({"faces >= 20 px": (c["recall"], c["precision"], metrics["ap50"])}, out_dir / "pr.png",
                   title="Demo model vs teacher labels (held-out split)")
    plot_recall_fppi(c, out_dir / "recall_fppi.png")
    if result["nme"].size:
        plot_ced_curves({"5-point NME (inter-ocular)": result["nme"]}, out_dir / "ced.png", max_error=0.2,
                        threshold=0.1, title="Landmarks vs teacher (held-out split)")
    atomic_write_json(out_dir / "metrics.json", metrics)
    d = metrics["at_default_threshold"]
    b = metrics["best_recall_at_0.3_fppi"]
    n = metrics["nme_interocular"]
    lines = [
        "# Demo model on the held-out split (teacher labels)", "",
        f"- images {metrics['images']}, faces >= {metrics['min_face_px']:g} px: {metrics['faces_ge_min']}",
        f"- AP50: {metrics['ap50']:.4f}",
        f"- default threshold {d['threshold']}: recall {d['recall']:.4f}, false positives / image {d['fp_per_image']:.3f}",
        f"- best recall at <= 0.3 FP / image: {b['recall']:.4f} (threshold {b['threshold']})",
        f"- 5-point NME (inter-ocular), {n['faces']} faces: mean {n['mean']}, median {n['median']}, p90 {n['p90']}",
        "", "| face size (px) | faces | recall at default threshold |", "|---|---|---|",
    ]
    for k, r in metrics["recall_by_size_at_default"].items():
        lines.append(f"| {k} | {metrics['faces_by_size'][k]} | {'-' if r is None else f'{r:.4f}'} |")
    lines += ["", "| face size (px) | faces with landmarks | mean NME | median NME |", "|---|---|---|---|"]
    for k, v in metrics.get("nme_by_size", {}).items():
        lines.append(f"| {k} | {v['faces']} | {_fmt(v['mean'])} | {_fmt(v['median'])} |")
    lines += ["", "| pose: abs(yaw proxy) (nose offset / inter-ocular, teacher landmarks) | faces | recall at default "
              "threshold |", "|---|---|---|"]
    for k, r in metrics["recall_by_yaw_at_default"].items():
        lines.append(f"| {k} | {metrics['faces_by_yaw'][k]} | {'-' if r is None else f'{r:.4f}'} |")
    occluded = metrics.get("occlusion_probe")
    if occluded:
        lines += ["", "Occlusion probe (lower half of every face painted grey, same images):", "",
                  "| face size (px) | recall at default threshold, occluded | unoccluded |", "|---|---|---|"]
        for k, r in occluded["recall_by_size_at_default"].items():
            clear = metrics["recall_by_size_at_default"][k]
            lines.append(f"| {k} | {'-' if r is None else f'{r:.4f}'} | {'-' if clear is None else f'{clear:.4f}'} |")
        d2 = occluded["at_default_threshold"]
        lines.append(f"| all | {d2['recall']:.4f} (FP / image {d2['fp_per_image']:.3f}) | {d['recall']:.4f} |")
    teacher = metrics.get("teacher_repeatability")
    if teacher:
        lines += ["", f"Teacher repeatability (CenterFace at {teacher['scale']:g}x; NME against one labelling, "
                      "maskface/demo/teacher_check.py):", "",
                  "| comparison | faces | mean NME | median NME |", "|---|---|---|---|"]
        for key, what in (("mirror", "teacher on the image vs on its mirror image"),
                          ("relabel", "teacher on the composed image vs the stored label")):
            t = teacher[key]
            lines.append(f"| {what} | {t['faces']} | {_fmt(t['mean'])} | {_fmt(t['median'])} |")
    atomic_write_bytes(out_dir / "metrics.md", ("\n".join(lines) + "\n").encode())
    return metrics


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def parse_scales(text: str) -> tuple[float, ...]:
    """'1,2' -> (1.0, 2.0); each factor in (0, 4] (a pass at 4x --max-side already costs 16x)."""
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"demo-eval: --landmark-tta takes a comma list of numbers like 1,2, got {text!r}") from None
    if not scales or any(not 0 < v <= 4 for v in scales):
        raise SystemExit(f"demo-eval: --landmark-tta scales must be in (0, 4], got {text!r}")
    return scales


class RefinedLandmarks:
    """A predictor whose landmarks come from maskface.engine.tta.refine_landmarks: the plain
    predictor's detections, landmarks averaged over the flipped and rescaled passes. Scale s runs
    `make_predictor(round(max_side * s))` (one per input size, made once)."""

    def __init__(self, predictor, make_predictor, max_side: int, scales: tuple[float, ...]):
        self.predictor, self.model, self.scales = predictor, predictor.model, scales
        self._make, self._max_side, self._by_side = make_predictor, max_side, {max_side: predictor}

    def _predict(self, image: np.ndarray, scale: float) -> dict:
        side = round(self._max_side * scale)
        if side not in self._by_side:
            self._by_side[side] = self._make(side)
        return self._by_side[side](image)

    def __call__(self, image: np.ndarray) -> dict:
        from ..engine.tta import refine_landmarks

        return refine_landmarks(self._predict, image, self.predictor(image), self.scales)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo-eval", help="evaluate a model on the demo data's held-out split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pth)")
    p.add_argument("--data", required=True, help="the folder `maskface demo-data` wrote")
    p.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for metrics.json/.md and the plots")
    p.add_argument("--max-side", type=int, default=640, help="inference resize (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--pre-nms-topk", type=int, default=None,
                   help="candidates kept before NMS (default: the checkpoint's, 3840 = TensorRT's TopK limit)")
    p.add_argument("--min-face", type=float, default=20.0, help="smallest face (long side, px) that counts (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N "
                   "(default: %(default)s)")
    p.add_argument("--occlusion-probe", action="store_true",
                   help="a second pass with the lower half of every face painted grey (recall under occlusion)")
    p.add_argument("--teacher-check", action="store_true",
                   help="also measure how repeatable the teacher's landmarks are on this split (CenterFace on "
                        "each image vs its mirror image, and vs the stored labels): the floor under the NME "
                        "(maskface/demo/teacher_check.py); needs the demo sources cache")
    p.add_argument("--landmark-tta", default=None, metavar="SCALES",
                   help="landmark test-time augmentation (maskface.engine.tta.refine_landmarks): detections of the "
                        "plain pass, landmarks averaged over it, its mirror image and each extra input scale "
                        "(comma list of factors on --max-side, e.g. 1,2: flip at 640 plus 1280 and its flip). "
                        "Default: off")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import resolve_device
    from ..checkpoint import load_model
    from ..data.widerface import WiderFaceDataset
    from ..engine.predictor import Predictor

    scales = parse_scales(args.landmark_tta) if args.landmark_tta else ()  # a typo fails before any loading
    ds = WiderFaceDataset(args.data, split=args.split)
    records = ds.records[: args.max_images] if args.max_images else ds.records
    model = load_model(args.checkpoint)
    if args.pre_nms_topk:
        model.cfg.inference.pre_nms_topk = args.pre_nms_topk
    device = resolve_device(args.device)
    predictor = Predictor(model, device=device, max_side=args.max_side)
    if scales:
        predictor = RefinedLandmarks(predictor, lambda side: Predictor(model, device=device, max_side=side),
                                     args.max_side, scales)
    result = evaluate_split(predictor, records, args.min_face, progress=not args.no_progress)
    extra = {"checkpoint": str(args.checkpoint), "split": args.split, "max_side": args.max_side,
             "pre_nms_topk": model.cfg.inference.pre_nms_topk, "landmark_tta": args.landmark_tta}
    if args.occlusion_probe:
        probe = evaluate_split(predictor, records, args.min_face, progress=not args.no_progress,
                               transform=occlude_lower_half)["metrics"]
        extra["occlusion_probe"] = {k: probe[k] for k in ("at_default_threshold", "recall_by_size_at_default",
                                                          "nme_interocular")}
    if args.teacher_check:
        from .sources import CENTERFACE_ONNX, default_cache, extract
        from .teacher import CenterFaceTeacher
        from .teacher_check import teacher_repeatability

        teacher = CenterFaceTeacher(extract(*CENTERFACE_ONNX, cache=default_cache()), threads=2)
        extra["teacher_repeatability"] = teacher_repeatability(teacher, records, min_face=args.min_face,
                                                               progress=not args.no_progress)
    metrics = write_report(result, Path(args.out), extra)
    print(json.dumps({k: metrics[k] for k in ("ap50", "at_default_threshold", "best_recall_at_0.3_fppi",
                                              "nme_interocular")}))
    return 0
