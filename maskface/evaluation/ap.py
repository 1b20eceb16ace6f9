"""Average precision helpers shared by the evaluators, and VOC AP for pooled face lists.

Conventions (numpy only, no torch):
- Boxes are ``[N, 4]`` arrays ``(x1, y1, x2, y2)`` in continuous pixel coordinates unless a
  function says otherwise. ``plus_one=True`` switches to the old "inclusive pixel" convention of
  the VOC / WIDER FACE MATLAB code, where a box spans ``x2 - x1 + 1`` pixels.
- :func:`voc_ap` is the VOC2010+ "area under the interpolated precision envelope" (the MATLAB
  ``VOCap``); the 11-point VOC2007 variant is available with ``eleven_point=True``.
- :func:`pooled_detection_ap` is the AP used for AFW and PASCAL faces: all faces of all images are
  pooled, detections are ranked by score over the whole list, each detection is matched to the
  ground-truth face it overlaps most in its image, a face counts once (later duplicates are false
  positives), and faces marked ``ignore`` (VOC "difficult") count neither way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 ``[N, 4]`` array (an empty input gives ``[0, 4]``)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes) -> np.ndarray:
    """``(x, y, w, h)`` -> ``(x1, y1, x2, y2)`` with ``x2 = x + w`` (no +1)."""
    b = as_boxes(boxes).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_to_xywh(boxes) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` with ``w = x2 - x1`` (no +1)."""
    b = as_boxes(boxes).copy()
    b[:, 2] -= b[:, 0]
    b[:, 3] -= b[:, 1]
    return b


def box_area(boxes, plus_one: bool = False) -> np.ndarray:
    b = as_boxes(boxes)
    one = 1.0 if plus_one else 0.0
    return (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)


def box_iou(a, b, plus_one: bool = False) -> np.ndarray:
    """IoU matrix ``[N, M]`` between xyxy boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]``.

    Pairs without a positive-width and positive-height intersection get 0 (also for degenerate
    boxes, whose "area" may be zero or negative).
    """
    a = as_boxes(a, "a")
    b = as_boxes(b, "b")
    one = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    inter = iw * ih
    union = box_area(a, plus_one)[:, None] + box_area(b, plus_one)[None, :] - inter
    valid = (iw > 0) & (ih > 0) & (union > 0)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=valid)
    return out


def voc_ap(recall, precision, eleven_point: bool = False) -> float:
    """VOC average precision of a precision/recall curve (points ordered by rising recall).

    Area method (default, the MATLAB ``VOCap``): append recall 0 / 1 and precision 0 / 0, make
    precision monotonically non-increasing from the right, and sum ``delta_recall * precision``
    where recall changes. NaN precisions (0/0 at thresholds with no detection) are skipped the
    way MATLAB's ``max`` skips NaN, so they never poison the envelope.
    ``eleven_point=True``: VOC2007 mean of the best precision at recall >= 0, 0.1, ..., 1.
    """
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    if eleven_point:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            sel = prec[(rec >= t) & ~np.isnan(prec)]
            ap += (sel.max() if sel.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # Right-to-left running maximum ignoring NaN (np.fmax), as MATLAB's max does.
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    terms = (mrec[idx] - mrec[idx - 1]) * mpre[idx]
    # Left-to-right accumulation (cumsum), as MATLAB's sum adds, rather than numpy's pairwise sum.
    return float(np.cumsum(terms)[-1]) if terms.size else 0.0


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """Boolean mask: True where ``ids[i]`` appears for the first time (reading left to right)."""
    ids = np.asarray(ids)
    mask = np.zeros(ids.shape[0], dtype=bool)
    if ids.size:
        _, first = np.unique(ids, return_index=True)
        mask[first] = True
    return mask


@dataclass
class PooledAPResult:
    ap: float
    precision: np.ndarray  # [D] after each ranked detection
    recall: np.ndarray  # [D]
    scores: np.ndarray  # [D] ranked scores (descending)
    num_faces: int  # faces that count (not ignored)
    num_detections: int
    true_positive: np.ndarray = field(repr=False, default=None)  # [D] bool, ranked order

    def to_dict(self) -> dict:
        return {"ap": self.ap, "num_faces": self.num_faces, "num_detections": self.num_detections}


def pooled_detection_ap(
    gt_boxes: Sequence,
    pred_boxes: Sequence,
    pred_scores: Sequence,
    iou_threshold: float = 0.5,
    gt_ignore: Sequence | None = None,
    plus_one: bool = False,
    eleven_point: bool = False,
) -> PooledAPResult:
    """VOC AP over a list of images with all faces pooled (AFW, PASCAL faces, FDDB-style lists).

    ``gt_boxes[i]``: ``[G_i, 4]`` xyxy faces of image i; ``pred_boxes[i]`` ``[P_i, 4]`` xyxy and
    ``pred_scores[i]`` ``[P_i]``; ``gt_ignore[i]`` optional ``[G_i]`` bool (VOC "difficult").
    Matching follows the VOC devkit: detections in descending score order (ties keep list order);
    each takes the face with the highest IoU in its image; IoU >= ``iou_threshold`` and face not
    ignored and not yet taken -> true positive; taken already or IoU below -> false positive;
    ignored face -> the detection is dropped. Detections on images without faces are false
    positives. Returns AP by :func:`voc_ap` plus the ranked curve.
    """
    n = len(gt_boxes)
    if len(pred_boxes) != n or len(pred_scores) != n:
        raise ValueError(
            f"need one entry per image: {n} gt, {len(pred_boxes)} pred boxes, {len(pred_scores)} scores"
        )
    scores_all, gid_all, status_all = [], [], []
    offset, num_faces = 0, 0
    for i in range(n):
        g = as_boxes(gt_boxes[i], f"gt_boxes[{i}]")
        p = as_boxes(pred_boxes[i], f"pred_boxes[{i}]")
        s = np.asarray(pred_scores[i], dtype=np.float64).ravel()
        if s.shape[0] != p.shape[0]:
            raise ValueError(f"image {i}: {p.shape[0]} boxes but {s.shape[0]} scores")
        ign = np.zeros(g.shape[0], bool) if gt_ignore is None else np.asarray(gt_ignore[i], bool).ravel()
        if ign.shape[0] != g.shape[0]:
            raise ValueError(f"image {i}: {g.shape[0]} faces but {ign.shape[0]} ignore flags")
        num_faces += int((~ign).sum())
        # status: 0 = unmatched (FP), 1 = candidate TP on face gid, 2 = on an ignored face (drop)
        status = np.zeros(p.shape[0], np.int8)
        gid = np.full(p.shape[0], -1, np.int64)
        if g.shape[0] and p.shape[0]:
            iou = box_iou(p, g, plus_one)
            best = iou.argmax(axis=1)
            ok = iou[np.arange(p.shape[0]), best] >= iou_threshold
            gid[ok] = offset + best[ok]
            status[ok] = np.where(ign[best[ok]], 2, 1)
        offset += g.shape[0]
        scores_all.append(s)
        gid_all.append(gid)
        status_all.append(status)
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    gid = np.concatenate(gid_all) if gid_all else np.zeros(0, np.int64)
    status = np.concatenate(status_all) if status_all else np.zeros(0, np.int8)
    if np.isnan(scores).any():
        raise ValueError("detection scores contain NaN")
    order = np.argsort(-scores, kind="stable")
    scores, gid, status = scores[order], gid[order], status[order]
    keep = status != 2
    scores, gid, status = scores[keep], gid[keep], status[keep]
    cand = status == 1
    tp = np.zeros(scores.shape[0], bool)
    tp[np.flatnonzero(cand)[first_occurrence(gid[cand])]] = True
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / num_faces if num_faces else np.full(ctp.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).tiny)
    ap = voc_ap(recall, precision, eleven_point) if num_faces else float("nan")
    return PooledAPResult(ap, precision, recall, scores, num_faces, int(scores.shape[0]), tp)
