"""The paper's Table 2 protocol for AFW and PASCAL faces: the face-eval toolbox of Mathias et al.
(ECCV 2014, ``plot_AP.py`` / ``VOCpr.py``), reimplemented from its description below.

``protocol="toolbox"`` (default), the toolbox's steps:

1. ground truth: faces flagged ignore, or narrower / lower than ``min_size`` (30 px), are ignored
   (``maskface.data.face_eval``); only the others count as faces to find;
2. detections are kept when their width *or* height exceeds ``int(sqrt(0.5 * min_w * min_h))``
   (21 px for 30 x 30);
3. matching, best score first (ties in file order): a detection takes the face of its image with
   the largest overlap (the last one on ties), overlap in the inclusive-pixel convention
   (``(x2 - x1 + 1) * (y2 - y1 + 1)``); overlap > 0.5 (strictly) on an unfound counted face: true
   positive; on an ignored face: neither; otherwise (face already found, overlap <= 0.5, image
   without faces): false positive;
4. box calibration, ``iterations`` rounds (the toolbox's ``--nit``, 5): the mean centre offset and
   size ratio of the true positives (relative to the detection's size) are applied to *every*
   detection. The scores of round k use the boxes calibrated k - 1 times, so the AP is that of
   the last round (one round = no calibration). It absorbs the difference between a detector's
   box style and the annotators';
5. AP: VOC area under the precision envelope over all detections.

``protocol="voc"``: the plain pooled VOC AP of ``maskface.evaluation.ap.pooled_detection_ap``
(continuous IoU >= 0.5, no size filter on detections, no calibration).
"""
from __future__ import annotations

import math

import numpy as np

from maskface.data.face_eval import MIN_FACE_SIZE, FaceEvalImage
from maskface.evaluation.ap import PooledAPResult, pooled_detection_ap, voc_ap

PROTOCOLS = ("toolbox", "voc")


def _check_images(gt: list[FaceEvalImage], detections: dict) -> list[str]:
    stems = [im.stem for im in gt]
    if len(set(stems)) != len(stems):
        raise ValueError("the annotation lists an image twice")
    unknown = sorted(set(detections) - set(stems))
    if unknown:
        raise ValueError(f"{len(unknown)} detected images are not in the annotation, e.g. {unknown[:5]} "
                         "(AFW and PASCAL faces have separate annotation files)")
    return stems


def inclusive_overlap(box, boxes) -> np.ndarray:
    """IoU of one xyxy box with ``[N, 4]`` boxes, inclusive pixels (+1); 0 unless they overlap strictly."""
    b = np.asarray(box, np.float64)
    g = np.asarray(boxes, np.float64).reshape(-1, 4)
    area_b = (abs(b[2] - b[0]) + 1) * (abs(b[3] - b[1]) + 1)
    area_g = (np.abs(g[:, 2] - g[:, 0]) + 1) * (np.abs(g[:, 3] - g[:, 1]) + 1)
    hit = (b[3] > g[:, 1]) & (g[:, 3] > b[1]) & (b[2] > g[:, 0]) & (g[:, 2] > b[0])
    iw = np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]) + 1
    ih = np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]) + 1
    inter = np.where(hit, iw * ih, 0.0)
    return inter / (area_b + area_g - inter)


def _match(gt_by_stem: dict, stems: np.ndarray, boxes: np.ndarray, overlap: float):
    """tp / fp flags in the given (ranked) order, and the calibration terms of the true positives."""
    found = {k: np.zeros(len(v.boxes), bool) for k, v in gt_by_stem.items()}
    tp = np.zeros(len(boxes), bool)
    fp = np.zeros(len(boxes), bool)
    terms = []
    for i, (stem, box) in enumerate(zip(stems, boxes)):
        im = gt_by_stem.get(stem)
        if im is None or len(im.boxes) == 0:
            fp[i] = True
            continue
        ov = inclusive_overlap(box, im.boxes)
        j = len(ov) - 1 - int(np.argmax(ov[::-1]))  # the last face on ties
        if ov[j] <= overlap:
            fp[i] = True
        elif not im.ignore[j]:
            if found[stem][j]:
                fp[i] = True
            else:
                tp[i] = found[stem][j] = True
                g = im.boxes[j]
                w, h = box[2] - box[0], box[3] - box[1]
                terms.append((((g[0] + g[2]) - (box[0] + box[2])) / 2 / w, ((g[1] + g[3]) - (box[1] + box[3])) / 2 / h,
                              (g[2] - g[0]) / w, (g[3] - g[1]) / h))
    return tp, fp, terms


def _calibrate(boxes: np.ndarray, tx: float, ty: float, sx: float, sy: float) -> np.ndarray:
    w, h = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + tx * w * 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + ty * h * 2
    return np.stack([cx - w * sx, cy - h * sy, cx + w * sx, cy + h * sy], axis=1)


def toolbox_ap(gt: list[FaceEvalImage], detections: dict, overlap: float = 0.5, iterations: int = 5,
               min_size: tuple[float, float] = MIN_FACE_SIZE) -> PooledAPResult:
    """The toolbox protocol of the module doc (``gt`` read with the same ``min_size``)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    _check_images(gt, detections)
    minpix = int(math.sqrt(0.5 * min_size[0] * min_size[1]))
    stems, boxes, scores = [], [], []
    for stem, (b, s) in detections.items():
        b = np.asarray(b, np.float64).reshape(-1, 4)
        keep = ((b[:, 2] - b[:, 0]) > minpix) | ((b[:, 3] - b[:, 1]) > minpix)
        stems += [stem] * int(keep.sum())
        boxes.append(b[keep])
        scores.append(np.asarray(s, np.float64).ravel()[keep])
    boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    stems_r, boxes, scores = np.asarray(stems, dtype=object)[order], boxes[order], scores[order]
    gt_by_stem = {im.stem: im for im in gt}
    num_faces = int(sum((~im.ignore).sum() for im in gt))
    for round_ in range(iterations):
        tp, fp, terms = _match(gt_by_stem, stems_r, boxes, overlap)
        if round_ < iterations - 1 and terms:
            boxes = _calibrate(boxes, *np.mean(np.asarray(terms), axis=0))
    counted = tp | fp  # detections on ignored faces count neither way
    tp_c = tp[counted]
    ctp, cfp = np.cumsum(tp_c), np.cumsum(~tp_c)
    recall = ctp / num_faces if num_faces else np.full(ctp.shape, np.nan)
    precision = ctp / np.maximum(ctp + cfp, 1)
    ap = voc_ap(recall, precision) if num_faces else float("nan")
    return PooledAPResult(ap, precision, recall, scores[counted], num_faces, int(counted.sum()), tp_c)


def evaluate_face_eval(gt: list[FaceEvalImage], detections: dict, iou_threshold: float = 0.5,
                       protocol: str = "toolbox", iterations: int = 5,
                       min_size: tuple[float, float] = MIN_FACE_SIZE) -> PooledAPResult:
    """AP of ``detections`` ({stem: (boxes, scores)}) against the annotated images (module doc)."""
    if protocol == "toolbox":
        return toolbox_ap(gt, detections, iou_threshold, iterations, min_size)
    if protocol != "voc":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    stems = _check_images(gt, detections)
    empty = ((), ())
    return pooled_detection_ap([im.boxes for im in gt], [detections.get(s, empty)[0] for s in stems],
                               [detections.get(s, empty)[1] for s in stems], iou_threshold,
                               gt_ignore=[im.ignore for im in gt])
