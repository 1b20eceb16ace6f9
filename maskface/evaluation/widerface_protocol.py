"""The WIDER FACE validation protocol, exactly as the official MATLAB ``eval_tools`` computes it.

Protocol (``wider_eval.m`` / ``norm_score.m`` / ``evaluation.m``), reproduced step by step:

1. Each image's boxes are sorted by raw score, descending (stable for ties).
2. Scores are normalised over *all* predictions of the set: ``(s - min) / (max - min)``, with the
   running max / min starting at ``realmin('single')`` / ``realmax('single')``. Those seeds are
   single precision, so MATLAB does the normalisation in single precision; so do we.
3. Per image (skipped when it has no face box or no prediction, but its faces still count):
   every prediction, in score order, takes the ground-truth box of maximal overlap (the first
   one on ties); if the overlap is >= 0.5 and that face is not in the setting's keep list the
   prediction is ignored (not a proposal), otherwise the face is recalled (once). A prediction
   that matches nothing, or a face that is already recalled, stays a proposal (false positive).
4. 1000 thresholds ``1 - t/1000`` (t = 1..1000); at each, per image, the proposals and recalled
   faces among the predictions with normalised score >= threshold are summed over the set.
   precision = recalled / proposals, recall = recalled / (number of faces in the keep lists).
5. AP = VOC area under the precision envelope (``VOCap``), NaN precisions skipped.

The overlap of step 3 is :mod:`maskface.evaluation.widerface_overlap`. Checked against GNU Octave 7.3
(which follows MATLAB's integer and single-precision rules) running the official functions on noisy
synthetic predictions for all 3,226 images: all 3 x 1000 (proposals, recalled) counts and the three
APs are identical to the last bit. Both protocols agree on most predictions, and papers' numbers
come from either.

Deviation (documented, only hit by degenerate inputs): all normalised scores equal (max == min
after the single-precision cast): MATLAB divides 0 by 0, every score becomes NaN and no prediction
ever passes a threshold (AP 0). We set every normalised score to 1 instead (every prediction counts
at every threshold) and warn.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from maskface.evaluation.ap import first_occurrence, voc_ap
from maskface.evaluation.widerface_gt import WiderFaceGT, load_widerface_gt
from maskface.evaluation.widerface_overlap import IOU_THRESHOLD, PROTOCOLS, assign_faces
from maskface.evaluation.widerface_result import SettingCurve, WiderFaceResult
from maskface.evaluation.widerface_submission import read_predictions

NUM_THRESHOLDS = 1000
_REALMIN_SINGLE = np.float32(np.finfo(np.float32).tiny)  # realmin('single')
_REALMAX_SINGLE = np.float32(np.finfo(np.float32).max)  # realmax('single')


def normalise_scores(score_lists: Sequence[np.ndarray], protocol: str = "matlab") -> list[np.ndarray]:
    """``norm_score.m``: min-max normalisation over all predictions of the set (float64 out).

    ``matlab``: single-precision arithmetic with the realmin/realmax('single') seeds, as MATLAB
    evaluates it; ``continuous``: the same formula in double precision.
    """
    nonempty = [s for s in score_lists if s is not None and len(s)]
    if not nonempty:
        return [np.zeros(0) if s is None else np.asarray(s, np.float64) for s in score_lists]
    allv = np.concatenate(nonempty)
    if protocol == "matlab":
        hi = max(_REALMIN_SINGLE, np.float32(allv.max()))
        lo = min(_REALMAX_SINGLE, np.float32(allv.min()))
        span = np.float32(hi - lo)
        dtype = np.float32
    else:
        hi, lo = max(float(np.finfo(np.float32).tiny), float(allv.max())), min(float(np.finfo(np.float32).max), float(allv.min()))
        span = hi - lo
        dtype = np.float64
    out = []
    degenerate = span == 0
    if degenerate:
        warnings.warn("all prediction scores are equal: the official script would divide 0 by 0 and count "
                      "no prediction (AP 0); every normalised score is set to 1 instead", RuntimeWarning)
    for s in score_lists:
        if s is None or len(s) == 0:
            out.append(np.zeros(0))
            continue
        if degenerate:
            out.append(np.ones(len(s)))
        else:
            v = (np.asarray(s).astype(dtype) - dtype(lo)) / dtype(span)
            out.append(v.astype(np.float64))
    return out


def thresholds(num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """``1 - t / N`` for t = 1..N, in double precision as MATLAB computes them (descending)."""
    return 1.0 - np.arange(1, num_thresholds + 1, dtype=np.float64) / float(num_thresholds)


def _align_predictions(predictions, gt: WiderFaceGT) -> list[np.ndarray]:
    if isinstance(predictions, Mapping):
        out: list[np.ndarray | None] = [None] * len(gt)
        for key, value in predictions.items():
            event, name = key
            try:
                out[gt.index(event, name)] = value
            except KeyError:
                raise KeyError(f"prediction for {event}/{name}, which is not in the ground truth") from None
        predictions = out
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} prediction entries for {len(gt)} ground-truth images")
    aligned = []
    for i, p in enumerate(predictions):
        if p is None:
            aligned.append(np.zeros((0, 5)))
            continue
        arr = np.asarray(p, dtype=np.float64)
        if arr.size == 0:
            aligned.append(np.zeros((0, 5)))
            continue
        if arr.ndim != 2 or arr.shape[1] < 5:
            raise ValueError(f"predictions for {gt.image_events[i]}/{gt.image_names[i]} must be [N, 5] "
                             f"(x, y, w, h, score), got {arr.shape}")
        if not np.isfinite(arr[:, :5]).all():
            raise ValueError(f"predictions for {gt.image_events[i]}/{gt.image_names[i]} are not finite")
        aligned.append(arr[:, :5])
    return aligned


def evaluate_widerface(
    predictions,
    gt: WiderFaceGT,
    settings: Sequence[str] | None = None,
    protocol: str = "matlab",
    iou_threshold: float = IOU_THRESHOLD,
    num_thresholds: int = NUM_THRESHOLDS,
    events: Iterable[str] | None = None,
) -> WiderFaceResult:
    """AP and PR curves of ``predictions`` on ``gt`` for each setting (see the module docstring).

    ``predictions``: a list aligned with ``gt`` (each ``[N, 5]`` ``x y w h score``, or None for
    no detection) as :func:`read_predictions` returns, or a mapping ``(event, image) -> [N, 5]``
    (absent images have no detection). ``events``: evaluate only these events (score
    normalisation and face counts then cover only them, as if the .mat held only them).
    """
    t0 = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    settings = tuple(settings) if settings is not None else gt.settings
    for s in settings:
        if s not in gt.keep:
            raise ValueError(f"setting {s!r} not loaded (have {gt.settings})")
    preds = _align_predictions(predictions, gt)
    if events is not None:
        events = set(events)
        unknown = events - set(gt.events)
        if unknown:
            raise KeyError(f"unknown WIDER FACE events: {sorted(unknown)}")
        sel = [i for i, e in enumerate(gt.image_events) if e in events]
    else:
        sel = list(range(len(gt)))

    # 1. sort each image by raw score (descending, stable), 2. normalise over the whole set.
    sorted_preds = []
    for i in sel:
        p = preds[i]
        sorted_preds.append(p[np.argsort(-p[:, 4], kind="stable")] if p.shape[0] > 1 else p)
    norm = normalise_scores([p[:, 4] for p in sorted_preds], protocol)

    # 3. per image matching (independent of the setting): global face id or -1. Images without
    #    a face box or without a prediction are skipped, as the official script does.
    face_offset = np.zeros(len(sel) + 1, dtype=np.int64)
    for k, i in enumerate(sel):
        face_offset[k + 1] = face_offset[k] + gt.boxes[i].shape[0]
    used = [k for k, i in enumerate(sel) if sorted_preds[k].shape[0] and gt.boxes[i].shape[0]]
    assigned = assign_faces([sorted_preds[k][:, :4] for k in used], [gt.boxes[sel[k]] for k in used],
                            protocol, iou_threshold)
    scores_parts = [norm[k] for k in used]
    face_parts = [np.where(a >= 0, face_offset[k] + a, -1) for k, a in zip(used, assigned)]
    scores = np.concatenate(scores_parts) if scores_parts else np.zeros(0)
    face = np.concatenate(face_parts) if face_parts else np.zeros(0, np.int64)
    matched = face >= 0
    ths = thresholds(num_thresholds)

    curves: dict[str, SettingCurve] = {}
    for setting in settings:
        keep = np.zeros(int(face_offset[-1]), dtype=bool)
        num_faces = 0
        for k, i in enumerate(sel):
            idx = gt.keep[setting][i]
            keep[face_offset[k] + idx] = True
            num_faces += idx.size
        kept = np.zeros_like(matched)
        kept[matched] = keep[face[matched]]
        proposal = ~(matched & ~kept)  # a prediction on an ignored face is not a proposal
        cand = np.flatnonzero(matched & kept)
        first = cand[first_occurrence(face[cand])]  # the prediction that recalls each face
        prop_scores = np.sort(scores[proposal])
        rec_scores = np.sort(scores[first])
        n_prop = prop_scores.shape[0] - np.searchsorted(prop_scores, ths, side="left")
        n_rec = rec_scores.shape[0] - np.searchsorted(rec_scores, ths, side="left")
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = n_rec / n_prop.astype(np.float64)
            recall = n_rec / float(num_faces) if num_faces else np.full(ths.shape, np.nan)
        ap = voc_ap(recall, precision) if num_faces else float("nan")
        curves[setting] = SettingCurve(ap, precision, recall, n_prop, n_rec, num_faces)
    n_pred = int(sum(p.shape[0] for p in sorted_preds))
    return WiderFaceResult(curves, ths, protocol, iou_threshold, len(sel), n_pred, time.perf_counter() - t0)


def evaluate_widerface_dir(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
    progress: bool = False,
    **kwargs,
) -> WiderFaceResult:
    """Read the ground truth and a submission folder, then :func:`evaluate_widerface`."""
    t0 = time.perf_counter()
    gt = load_widerface_gt(gt_dir)
    preds = read_predictions(pred_dir, gt, allow_missing=allow_missing, progress=progress)
    result = evaluate_widerface(preds, gt, **kwargs)
    result.seconds = time.perf_counter() - t0
    return result
