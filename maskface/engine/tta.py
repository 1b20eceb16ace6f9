"""The paper's evaluation test-time augmentation (§4.2): horizontal flip and an image pyramid,
Soft-NMS on each augmented image's raw predictions, then box voting over all of them.

"Raw" means before the model's own hard NMS (0.4): :func:`model_passes` runs the model with NMS
switched off, so Soft-NMS sees (and rescores) every overlapping detection, as in the paper.
``model_passes(..., hard_nms_first=True)`` keeps the model's hard NMS before Soft-NMS (an option,
not the paper: Soft-NMS then only rescores boxes that already survived hard NMS).

Everything runs on a callable ``predict(image_bgr, scale) -> dict`` with

- ``boxes``: ``[N, 4]`` xyxy float, in the pixel coordinates of ``image_bgr`` as passed (the
  callable resizes by ``scale`` internally and maps its results back; see :func:`scaled`),
- ``scores``: ``[N]``,
- ``landmarks``: ``[N, K, 2]`` (optional; absent means K = 0),
- ``landmark_scores``: ``[N, K]`` (optional).

Coordinates are continuous (pixel j covers [j, j + 1)), so a horizontal flip of an image ``W``
pixels wide maps x to ``W - x``; landmarks are mapped back with
``maskface.data.landmark_sets.flip_landmarks``, which also reorders left/right points with the
set's permutation (a detector run on the mirrored image calls the image's left eye "left eye",
which is the original's right eye).

Choices (configurable):

- Soft-NMS (Bodla et al. 2017) per augmented image: repeatedly take the highest-scoring box and
  decay the scores of the others by ``1 - IoU`` when IoU >= ``soft_nms_iou`` (``linear``) or by
  ``exp(-IoU^2 / sigma)`` (``gaussian``); boxes whose score falls below ``soft_nms_min_score``
  are dropped.
- Box voting (Gidaris & Komodakis 2015, as used for face detection TTA by S3FD / RetinaFace)
  over the union of all augmented detections: take the highest-scoring remaining box, gather all
  remaining boxes with IoU >= ``vote_iou`` with it (itself included), replace it by the
  score-weighted average of the group's boxes (landmarks and landmark scores averaged with the
  same weights), give it the group's *maximum* score (the score of the box being refined, as in
  Gidaris & Komodakis; averaging scores would penalise boxes found by fewer augmentations less
  predictably), and remove the group. A box found alone is kept as it is.
- Default pyramid ``(0.5, 1.0, 1.5)`` with flips: six passes. The paper's exact scales are a
  parameter; large scales cost time on big images.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from maskface.data.landmark_sets import flip_landmarks, flip_permutation
from maskface.evaluation.ap import box_iou

PredictFn = Callable[[np.ndarray, float], dict]
SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


@dataclass
class TTAConfig:
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)
    flip: bool = True
    soft_nms_method: str = "linear"
    soft_nms_iou: float = 0.3
    soft_nms_sigma: float = 0.5
    soft_nms_min_score: float = 0.001
    vote_iou: float = 0.3
    max_detections: int | None = 1000


def _as_detections(out: dict, where: str) -> dict:
    if not isinstance(out, dict) or "boxes" not in out or "scores" not in out:
        raise ValueError(f"{where}: predict must return a dict with 'boxes' and 'scores'")
    boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(out["scores"], dtype=np.float64).ravel()
    n = boxes.shape[0]
    if scores.shape[0] != n:
        raise ValueError(f"{where}: {n} boxes but {scores.shape[0]} scores")
    lms = out.get("landmarks")
    lms = np.zeros((n, 0, 2)) if lms is None or np.size(lms) == 0 else np.asarray(lms, dtype=np.float64).reshape(n, -1, 2)
    lsc = out.get("landmark_scores")
    lsc = None if lsc is None else np.asarray(lsc, dtype=np.float64).reshape(n, lms.shape[1])
    return {"boxes": boxes, "scores": scores, "landmarks": lms, "landmark_scores": lsc}


def _select(det: dict, idx: np.ndarray, scores: np.ndarray | None = None) -> dict:
    return {
        "boxes": det["boxes"][idx],
        "scores": det["scores"][idx] if scores is None else scores,
        "landmarks": det["landmarks"][idx],
        "landmark_scores": None if det["landmark_scores"] is None else det["landmark_scores"][idx],
    }


def flip_detections_back(det: dict, width: float) -> dict:
    """Map detections made on the horizontally flipped image back onto the original image."""
    boxes = det["boxes"].copy()
    boxes[:, 0] = width - det["boxes"][:, 2]
    boxes[:, 2] = width - det["boxes"][:, 0]
    lms = det["landmarks"]
    lsc = det["landmark_scores"]
    if lms.shape[1]:
        lms = flip_landmarks(lms, width)
        if lsc is not None:
            lsc = lsc[:, list(flip_permutation(lms.shape[1]))]
    return {"boxes": boxes, "scores": det["scores"].copy(), "landmarks": lms, "landmark_scores": lsc}


def soft_nms(
    boxes,
    scores,
    method: str = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    min_score: float = 0.001,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS on xyxy ``boxes`` ``[N, 4]``: returns (kept indices in selection order, their
    decayed scores). ``method``: ``linear`` (decay ``1 - IoU`` when IoU >= ``iou_threshold``),
    ``gaussian`` (decay ``exp(-IoU^2 / sigma)``) or ``hard`` (classic NMS: drop when IoU >=
    ``iou_threshold``). Boxes whose score drops below ``min_score`` are discarded; ties pick the
    lower index first."""
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).ravel().copy()
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    alive = np.flatnonzero(s >= min_score)  # indices still in play (IoU computed per step: O(N) memory)
    keep, kept_scores = [], []
    while alive.size:
        j = int(np.argmax(s[alive]))
        top = alive[j]
        keep.append(top)
        kept_scores.append(s[top])
        alive = np.delete(alive, j)
        if not alive.size:
            break
        iou = box_iou(b[top:top + 1], b[alive])[0]
        if method == "linear":
            decay = np.where(iou >= iou_threshold, 1.0 - iou, 1.0)
        elif method == "gaussian":
            decay = np.exp(-(iou * iou) / sigma)
        else:
            decay = np.where(iou >= iou_threshold, 0.0, 1.0)
        s[alive] *= decay
        alive = alive[s[alive] >= min_score]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float64)


def box_voting(det: dict, iou_threshold: float = 0.3) -> dict:
    """Box voting over detections ``{boxes, scores, landmarks, landmark_scores}`` (module doc).

    The weighted average is computed as ``top + sum(w * (b - top)) / sum(w)`` so that a group of
    identical boxes returns exactly that box. Weights are ``max(score, 0)``; a group whose
    weights sum to 0 keeps the top box. Output is sorted by score, descending.
    """
    boxes, scores = det["boxes"], det["scores"]
    lms, lsc = det["landmarks"], det["landmark_scores"]
    n = boxes.shape[0]
    order = np.argsort(-scores, kind="stable")
    remaining = np.ones(n, dtype=bool)
    out_b, out_s, out_l, out_ls = [], [], [], []
    for top in order:
        if not remaining[top]:
            continue
        rest = np.flatnonzero(remaining)
        iou = box_iou(boxes[top:top + 1], boxes[rest])[0]
        group = np.union1d(rest[iou >= iou_threshold], [top])
        remaining[group] = False
        w = np.maximum(scores[group], 0.0)
        wsum = w.sum()
        if wsum > 0:
            wn = (w / wsum)[:, None]
            out_b.append(boxes[top] + ((boxes[group] - boxes[top]) * wn).sum(axis=0))
            out_l.append(lms[top] + ((lms[group] - lms[top]) * wn[:, :, None]).sum(axis=0))
            if lsc is not None:
                out_ls.append(lsc[top] + ((lsc[group] - lsc[top]) * wn).sum(axis=0))
        else:
            out_b.append(boxes[top].copy())
            out_l.append(lms[top].copy())
            if lsc is not None:
                out_ls.append(lsc[top].copy())
        out_s.append(scores[group].max())
    k, m = lms.shape[1], len(out_s)
    result = {
        "boxes": np.array(out_b, dtype=np.float64).reshape(m, 4),
        "scores": np.array(out_s, dtype=np.float64),
        "landmarks": np.array(out_l, dtype=np.float64).reshape(m, k, 2),
        "landmark_scores": None if lsc is None else np.array(out_ls, dtype=np.float64).reshape(m, k),
    }
    o = np.argsort(-result["scores"], kind="stable")
    return {key: (None if v is None else v[o]) for key, v in result.items()}


def _mapped_passes(predict: PredictFn, image_bgr: np.ndarray, scales, flip: bool,
                   skip_plain: bool = False) -> Iterator[dict]:
    """Detections of every (scale, flip) pass, mapped back to the original image; with skip_plain,
    without the pass at scale 1, not flipped."""
    image = np.ascontiguousarray(image_bgr)
    for scale in scales:
        for flipped in ((False, True) if flip else (False,)):
            if skip_plain and scale == 1.0 and not flipped:
                continue
            src = np.ascontiguousarray(image[:, ::-1]) if flipped else image
            det = _as_detections(predict(src, float(scale)), f"predict(scale={scale}, flip={flipped})")
            yield flip_detections_back(det, image.shape[1]) if flipped else det


def augmented_detections(predict: PredictFn, image_bgr: np.ndarray, cfg: TTAConfig) -> list[dict]:
    """Detections of every (scale, flip) pass, mapped back to the original image, after Soft-NMS."""
    passes = []
    for det in _mapped_passes(predict, image_bgr, cfg.scales, cfg.flip):
        keep, new_scores = soft_nms(det["boxes"], det["scores"], cfg.soft_nms_method, cfg.soft_nms_iou,
                                    cfg.soft_nms_sigma, cfg.soft_nms_min_score)
        passes.append(_select(det, keep, new_scores))
    return passes


def tta_predict(predict: PredictFn, image_bgr: np.ndarray, cfg: TTAConfig | None = None, **overrides) -> dict:
    """Flip + pyramid + per-pass Soft-NMS + box voting. Returns float32 ``boxes [N, 4]`` (xyxy,
    original pixels), ``scores [N]``, ``landmarks [N, K, 2]`` and, when the passes return them,
    ``landmark_scores [N, K]``, sorted by score and capped at ``max_detections``."""
    cfg = cfg or TTAConfig()
    if overrides:
        cfg = TTAConfig(**{**cfg.__dict__, **overrides})
    if not cfg.scales:
        raise ValueError("TTA needs at least one scale")
    passes = augmented_detections(predict, image_bgr, cfg)
    k = max((p["landmarks"].shape[1] for p in passes), default=0)
    for p in passes:
        if p["landmarks"].shape[1] != k:
            raise ValueError("passes returned different numbers of landmarks")
    has_lsc = all(p["landmark_scores"] is not None for p in passes)
    n = sum(p["boxes"].shape[0] for p in passes)  # explicit: reshape(-1, 0, 2) is ambiguous when K = 0
    merged = {
        "boxes": np.concatenate([p["boxes"] for p in passes]),
        "scores": np.concatenate([p["scores"] for p in passes]),
        "landmarks": np.concatenate([p["landmarks"] for p in passes]).reshape(n, k, 2),
        "landmark_scores": np.concatenate([p["landmark_scores"] for p in passes]).reshape(n, k) if has_lsc else None,
    }
    voted = box_voting(merged, cfg.vote_iou)
    if cfg.max_detections is not None:
        voted = {key: (None if v is None else v[: cfg.max_detections]) for key, v in voted.items()}
    out = {
        "boxes": voted["boxes"].astype(np.float32),
        "scores": voted["scores"].astype(np.float32),
        "landmarks": voted["landmarks"].astype(np.float32),
    }
    if voted["landmark_scores"] is not None:
        out["landmark_scores"] = voted["landmark_scores"].astype(np.float32)
    return out


def refine_landmarks(predict: PredictFn, image_bgr: np.ndarray, detections: dict, scales: tuple[float, ...] = (1.0, 2.0),
                     flip: bool = True, match_iou: float = 0.6) -> dict:
    """Landmark-only test-time augmentation (not the paper's; its §4.2 TTA is tta_predict).

    ``detections`` (the plain pass: scale 1, not flipped) keep their boxes, scores and landmark
    scores; each one's landmarks become the mean over that pass and every (scale, flip) pass whose
    best-overlapping box has IoU >= ``match_iou`` with it. A pass that misses the face does not count.
    So recall and false positives are the plain pass's; only the points move. ``predict`` runs the
    usual pipeline, NMS included (``scaled(predictor)``, or one predictor per input size).
    """
    if not scales:
        raise ValueError("refine_landmarks needs at least one scale")
    if not 0 < match_iou <= 1:
        raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
    plain = _as_detections(detections, "detections")
    out = dict(detections)
    if not len(plain["boxes"]) or not plain["landmarks"].shape[1]:
        return out
    total, count = plain["landmarks"].copy(), np.ones(len(plain["boxes"]))
    for det in _mapped_passes(predict, image_bgr, scales, flip, skip_plain=True):  # the plain pass is `detections`
        if not len(det["boxes"]) or det["landmarks"].shape[1] != total.shape[1]:
            continue
        overlap = box_iou(plain["boxes"], det["boxes"])
        best = overlap.argmax(axis=1)
        found = overlap[np.arange(len(best)), best] >= match_iou
        total[found] += det["landmarks"][best[found]]
        count[found] += 1
    out["landmarks"] = (total / count[:, None, None]).astype(np.float32)
    return out


@contextlib.contextmanager
def raw_detections(model, max_detections: int | None = None) -> Iterator[None]:
    """Switch the model's hard NMS off (and let up to ``max_detections``, default the pre-NMS
    top-k, through) for the duration of the block; the settings are restored afterwards."""
    inf = model.cfg.inference
    saved = (inf.nms_threshold, inf.max_detections)
    inf.nms_threshold = None
    inf.max_detections = int(max_detections or inf.pre_nms_topk)
    try:
        yield
    finally:
        inf.nms_threshold, inf.max_detections = saved


def model_passes(predictor, hard_nms_first: bool = False, with_landmarks: bool = True,
                 raw_max_detections: int | None = None) -> PredictFn:
    """The ``predict(image_bgr, scale)`` callable of :func:`tta_predict` for an
    ``engine.predictor.Predictor``: its raw detections (score threshold only, no hard NMS), as
    §4.2 feeds them to Soft-NMS. ``hard_nms_first=True``: the model's usual output (hard NMS at
    its ``nms_threshold`` first; an option, not the paper). ``with_landmarks=False`` skips the
    keypoint head (box-only evaluation such as WIDER FACE)."""

    def run(image_bgr: np.ndarray, scale: float) -> dict:
        if hard_nms_first:
            return predictor(image_bgr, scale=scale, with_landmarks=with_landmarks)
        with raw_detections(predictor.model, raw_max_detections):
            return predictor(image_bgr, scale=scale, with_landmarks=with_landmarks)

    return run


def scaled(predictor: Callable[[np.ndarray], dict], interpolation: int | None = None) -> PredictFn:
    """Adapt ``predictor(image_bgr) -> dict`` (original-pixel outputs, e.g. the engine's Predictor)
    to the ``predict(image_bgr, scale)`` contract: resize by ``scale``, run, divide coordinates
    by ``scale``. Scale 1 passes the image through untouched."""

    def run(image_bgr: np.ndarray, scale: float) -> dict:
        if scale == 1.0:
            return dict(predictor(image_bgr))
        import cv2

        h, w = image_bgr.shape[:2]
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        interp = interpolation if interpolation is not None else (cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        resized = cv2.resize(image_bgr, size, interpolation=interp)
        out = dict(predictor(resized))
        sx, sy = size[0] / w, size[1] / h  # the exact factors after rounding the size
        boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4) / np.array([sx, sy, sx, sy])
        out["boxes"] = boxes
        if out.get("landmarks") is not None:
            out["landmarks"] = np.asarray(out["landmarks"], dtype=np.float64) / np.array([sx, sy])
        return out

    return run
