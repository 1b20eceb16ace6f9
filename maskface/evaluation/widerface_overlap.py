"""Which face each prediction matches: the official ``boxoverlap`` and its assignment.

``protocol="matlab"`` (default): the official ``boxoverlap`` runs on the int32 ground truth, and
MATLAB integer arithmetic is sticky (int32 op double -> int32, rounded half away from zero,
saturated; int32 ./ int32 rounds). So predicted coordinates are rounded when they are clipped
against a face, the union is rounded, and the "IoU" itself is the *integer* ``round(inter / union)``,
i.e. 1 when IoU >= 0.5 and 0 otherwise; "the face of maximal overlap" is then the first face (in
annotation order) with IoU >= 0.5. We reproduce that integer arithmetic.
``protocol="continuous"`` uses real-valued IoU (+1 pixel convention) and the face of highest IoU,
as the widely used Python port (wondervictor/WiderFace-Evaluation) does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PROTOCOLS = ("matlab", "continuous")
IOU_THRESHOLD = 0.5

_INT32_MIN = np.iinfo(np.int32).min
_INT32_MAX = np.iinfo(np.int32).max


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves away from zero (exact for all doubles)."""
    a = np.abs(x)
    f = np.floor(a)
    r = f + ((a - f) >= 0.5)
    return np.copysign(r, x)


def _sat(x: np.ndarray) -> np.ndarray:
    return np.clip(x, _INT32_MIN, _INT32_MAX)


def _to_int32(x: np.ndarray) -> np.ndarray:
    """double -> int32 the MATLAB way (round half away, saturate), held in int64."""
    return _sat(_round_half_away(np.asarray(x, dtype=np.float64))).astype(np.int64)


def _int_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """MATLAB int32 ``./``: rounded quotient; x/0 saturates to intmax/intmin, 0/0 = 0."""
    num_f = num.astype(np.float64)
    den_f = den.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = num_f / den_f
        q = np.where(den_f == 0, np.sign(num_f) * np.inf, q)
    q = np.nan_to_num(q, nan=0.0, posinf=_INT32_MAX, neginf=_INT32_MIN)
    return _sat(_round_half_away(q)).astype(np.int64)


def overlap_matlab(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """The official ``boxoverlap`` on int32 ground truth: int64 ``[P, G]`` values (0 or 1 for
    sane boxes), as MATLAB's integer arithmetic evaluates it (see this module's docstring)."""
    g = np.asarray(gt_xywh)
    if g.dtype.kind not in "iu":  # the published boxes are int32; round anything else like MATLAB would
        g = _to_int32(g)
    g = g.astype(np.int64)
    a1, a2 = g[:, 0], g[:, 1]
    a3, a4 = _sat(a1 + g[:, 2]), _sat(a2 + g[:, 3])
    p = np.asarray(pred_xywh, dtype=np.float64)
    b1, b2 = p[:, 0], p[:, 1]
    b3, b4 = p[:, 0] + p[:, 2], p[:, 1] + p[:, 3]
    x1 = np.maximum(a1[None, :], _to_int32(b1)[:, None])
    y1 = np.maximum(a2[None, :], _to_int32(b2)[:, None])
    x2 = np.minimum(a3[None, :], _to_int32(b3)[:, None])
    y2 = np.minimum(a4[None, :], _to_int32(b4)[:, None])
    w = _sat(_sat(x2 - x1) + 1)
    h = _sat(_sat(y2 - y1) + 1)
    inter = _sat(w * h)
    aarea = _sat(_sat(_sat(a3 - a1) + 1) * _sat(_sat(a4 - a2) + 1))
    barea = ((b3 - b1) + 1) * ((b4 - b2) + 1)
    union = _to_int32(aarea[None, :].astype(np.float64) + barea[:, None])
    union = _sat(union - inter)
    o = _int_divide(inter, union)
    o[(w <= 0) | (h <= 0)] = 0
    return o


_FAST_LIMIT = 16000  # |coordinates| below this: no int32 intermediate can saturate


def assign_faces(
    preds_xywh: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    protocol: str = "matlab",
    iou_threshold: float = IOU_THRESHOLD,
) -> list[np.ndarray]:
    """Per image, per prediction (in the given order): the index of the face the protocol
    assigns, or -1. ``matlab``: the first face of maximal integer overlap (the official
    ``[max_overlap, idx] = max(boxoverlap(...))``) when that overlap is >= ``iou_threshold``;
    ``continuous``: the face of highest real IoU (first on ties) when >= ``iou_threshold``.

    Equal to ``argmax``/``max`` over :func:`overlap_matlab` / :func:`overlap_continuous`, but
    only pairs whose boxes intersect are evaluated (every other pair has overlap 0 and cannot win
    against an overlap >= threshold > 0), and the arithmetic runs once over all images.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    n_img = len(preds_xywh)
    if len(gt_boxes) != n_img:
        raise ValueError(f"{n_img} prediction arrays for {len(gt_boxes)} images")
    p_off = np.zeros(n_img + 1, dtype=np.int64)
    g_off = np.zeros(n_img + 1, dtype=np.int64)
    p_off[1:] = np.cumsum([np.asarray(p).reshape(-1, 4).shape[0] if np.size(p) else 0 for p in preds_xywh])
    g_off[1:] = np.cumsum([np.asarray(g).reshape(-1, 4).shape[0] if np.size(g) else 0 for g in gt_boxes])
    n_pred, n_face = int(p_off[-1]), int(g_off[-1])
    out = np.full(n_pred, -1, dtype=np.int64)
    if n_pred == 0 or n_face == 0:
        return [out[p_off[k]:p_off[k + 1]] for k in range(n_img)]
    P = np.concatenate([np.asarray(p, np.float64).reshape(-1, 4) for p in preds_xywh if np.size(p)])
    b1, b2, b3, b4 = P[:, 0], P[:, 1], P[:, 0] + P[:, 2], P[:, 1] + P[:, 3]
    if protocol == "matlab":
        G = np.concatenate([np.asarray(g).reshape(-1, 4) for g in gt_boxes if np.size(g)])
        G = (G if G.dtype.kind in "iu" else _to_int32(G)).astype(np.int64)
        a1, a2 = G[:, 0], G[:, 1]
        a3, a4 = _sat(a1 + G[:, 2]), _sat(a2 + G[:, 3])
        r1, r2, r3, r4 = _to_int32(b1), _to_int32(b2), _to_int32(b3), _to_int32(b4)
        big_p = np.maximum.reduce([np.abs(r1), np.abs(r2), np.abs(r3), np.abs(r4)]) >= _FAST_LIMIT
        big_g = np.maximum.reduce([np.abs(a1), np.abs(a2), np.abs(a3), np.abs(a4)]) >= _FAST_LIMIT
        # Positive intersection width <=> min(a3, r3) >= max(a1, r1) (likewise for heights), which
        # needs a3 >= a1 and r3 >= r1: boxes failing that get a sentinel that never compares true.
        lo = np.int32(-(2**31) + 1)
        ok_g = (a3 >= a1) & (a4 >= a2)
        ok_p = (r3 >= r1) & (r4 >= r2)
        cmp_g = [x.astype(np.int32) for x in (a1, a2, np.where(ok_g, a3, lo), np.where(ok_g, a4, lo))]
        cmp_p = [x.astype(np.int32) for x in (r1, r2, np.where(ok_p, r3, lo), np.where(ok_p, r4, lo))]
    else:
        G = np.concatenate([np.asarray(g, np.float64).reshape(-1, 4) for g in gt_boxes if np.size(g)])
        a1, a2, a3, a4 = G[:, 0], G[:, 1], G[:, 0] + G[:, 2], G[:, 1] + G[:, 3]
        big_p = np.zeros(n_pred, bool)
        big_g = np.zeros(n_face, bool)
    cbp = np.concatenate(([0], np.cumsum(big_p)))
    cbg = np.concatenate(([0], np.cumsum(big_g)))
    dense_img = (cbp[p_off[1:]] - cbp[p_off[:-1]] > 0) | (cbg[g_off[1:]] - cbg[g_off[:-1]] > 0) | (iou_threshold <= 0)
    pp_parts, gg_parts = [], []
    for k in range(n_img):
        ps, pe, gs, ge = p_off[k], p_off[k + 1], g_off[k], g_off[k + 1]
        if ps == pe or gs == ge:
            continue
        if dense_img[k]:  # huge coordinates (saturation) or a threshold <= 0: exact dense evaluation
            dense = overlap_matlab if protocol == "matlab" else overlap_continuous
            o = dense(P[ps:pe], G[gs:ge])
            best = o.argmax(axis=1)
            hit = o[np.arange(o.shape[0]), best] >= iou_threshold
            out[ps:pe] = np.where(hit, gs + best, -1)
            continue
        if protocol == "matlab":
            g1, g2, g3, g4 = (c[gs:ge] for c in cmp_g)
            q1, q2, q3, q4 = (c[ps:pe, None] for c in cmp_p)
            mask = (g3 >= q1) & (q3 >= g1) & (g4 >= q2) & (q4 >= g2)
        else:
            iw = np.minimum(a3[gs:ge], b3[ps:pe, None]) - np.maximum(a1[gs:ge], b1[ps:pe, None]) + 1
            ih = np.minimum(a4[gs:ge], b4[ps:pe, None]) - np.maximum(a2[gs:ge], b2[ps:pe, None]) + 1
            mask = (iw > 0) & (ih > 0)
        pp, gg = np.nonzero(mask)
        pp_parts.append(pp + ps)
        gg_parts.append(gg + gs)
    if pp_parts:
        pp = np.concatenate(pp_parts)
        gg = np.concatenate(gg_parts)
        if protocol == "matlab":
            w = np.minimum(a3[gg], r3[pp]) - np.maximum(a1[gg], r1[pp]) + 1
            h = np.minimum(a4[gg], r4[pp]) - np.maximum(a2[gg], r2[pp]) + 1
            inter = w * h
            aarea = (a3 - a1 + 1) * (a4 - a2 + 1)
            barea = ((b3 - b1) + 1) * ((b4 - b2) + 1)
            union = _to_int32(aarea[gg].astype(np.float64) + barea[pp])
            o = _int_divide(inter, _sat(union - inter))
        else:
            iw = np.minimum(a3[gg], b3[pp]) - np.maximum(a1[gg], b1[pp]) + 1
            ih = np.minimum(a4[gg], b4[pp]) - np.maximum(a2[gg], b2[pp]) + 1
            inter = iw * ih
            union = ((a3 - a1 + 1) * (a4 - a2 + 1))[gg] + ((b3 - b1 + 1) * (b4 - b2 + 1))[pp] - inter
            o = np.zeros(inter.shape)
            np.divide(inter, union, out=o, where=union != 0)
        hit = o >= iou_threshold
        pp, gg, o = pp[hit], gg[hit], o[hit]
        order = np.lexsort((gg, -o, pp))  # per prediction: largest overlap, then lowest face index
        pp, gg = pp[order], gg[order]
        first = np.ones(pp.size, dtype=bool)
        first[1:] = pp[1:] != pp[:-1]
        out[pp[first]] = gg[first]
    return [np.where(out[p_off[k]:p_off[k + 1]] >= 0, out[p_off[k]:p_off[k + 1]] - g_off[k], -1)
            for k in range(n_img)]


def overlap_continuous(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """Real-valued IoU ``[P, G]`` with the +1 pixel convention (the Python port's ``bbox_overlaps``)."""
    g = np.asarray(gt_xywh, dtype=np.float64)
    p = np.asarray(pred_xywh, dtype=np.float64)
    a1, a2, a3, a4 = g[:, 0], g[:, 1], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
    b1, b2, b3, b4 = p[:, 0], p[:, 1], p[:, 0] + p[:, 2], p[:, 1] + p[:, 3]
    iw = np.minimum(a3[None, :], b3[:, None]) - np.maximum(a1[None, :], b1[:, None]) + 1
    ih = np.minimum(a4[None, :], b4[:, None]) - np.maximum(a2[None, :], b2[:, None]) + 1
    inter = iw * ih
    union = ((a3 - a1 + 1) * (a4 - a2 + 1))[None, :] + ((b3 - b1 + 1) * (b4 - b2 + 1))[:, None] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=(iw > 0) & (ih > 0) & (union != 0))
    return out
