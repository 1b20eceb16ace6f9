"""How repeatable the teacher's landmarks are: the floor under the demo model's NME.

`maskface demo-eval --teacher-check` measures, on a split's faces (long side >= min_face, all five
labels present; NME normalised by the stored labels' inter-ocular distance, as demo-eval's NME):

* mirror: CenterFace on the image vs on its mirror image (points mirrored back, left and right
  swapped). Two equally valid labellings of the same pixels. No student can be closer to both than
  half their distance on average (triangle inequality), so label noise of at least that size sits
  in every NME measured against one of them.
* relabel: CenterFace run again on the composed image vs the stored label (which it made on the
  source face at a good scale before composing).

Faces are paired at IoU >= 0.5 (stored box -> teacher box -> mirrored teacher box).
"""
from __future__ import annotations

import numpy as np

from ..evaluation.ap import box_iou
from ..evaluation.landmarks import interocular_normaliser
from .evaluate import SIZE_BUCKETS, _bucket_name
from .teacher import mirror_partners

PAIR_IOU = 0.5


def _best(iou_row: np.ndarray) -> int | None:
    if iou_row.size == 0:
        return None
    j = int(iou_row.argmax())
    return j if iou_row[j] >= PAIR_IOU else None


def teacher_repeatability(teacher, records, scale: float = 2.0, min_face: float = 20.0,
                          progress: bool = True) -> dict:
    """`teacher(image_bgr, threshold=, scale=, nms_iou=)` -> TeacherFaces (boxes, scores, landmarks); `records` as
    WiderFaceDataset's. Returns {"mirror": ..., "relabel": ...}: faces, mean / median NME, by size."""
    from tqdm import tqdm

    from ..data.dataset import read_image

    errors: dict[str, list[tuple[float, float]]] = {"mirror": [], "relabel": []}  # (NME, face side)
    for rec in tqdm(records, desc="teacher check", dynamic_ncols=True, disable=not progress):
        gt = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        if not len(gt):
            continue
        image = read_image(rec.image_path)
        found = teacher(image, threshold=0.5, scale=scale)
        partners = mirror_partners(teacher, image, found, 0.5, scale, pair_iou=PAIR_IOU)
        to_found = box_iou(gt, np.asarray(found.boxes, np.float64).reshape(-1, 4))
        side = np.maximum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1])
        for g in range(len(gt)):
            if side[g] < min_face or not np.asarray(rec.landmark_valid[g]).all():
                continue
            i = _best(to_found[g])
            if i is None:
                continue
            label = np.asarray(rec.landmarks[g], np.float64)
            inter_ocular = float(interocular_normaliser(label[None])[0])
            point = np.asarray(found.landmarks[i], np.float64)
            errors["relabel"].append((float(np.linalg.norm(point - label, axis=1).mean() / inter_ocular), side[g]))
            if partners[i] is not None:
                errors["mirror"].append((float(np.linalg.norm(point - partners[i], axis=1).mean() / inter_ocular),
                                         side[g]))
    return {name: _summary(pairs) for name, pairs in errors.items()} | {"scale": scale, "min_face_px": min_face}


def _summary(pairs: list[tuple[float, float]]) -> dict:
    nme = np.asarray([p[0] for p in pairs if np.isfinite(p[0])])
    side = np.asarray([p[1] for p in pairs if np.isfinite(p[0])])
    by_size = {}
    for lo, hi in SIZE_BUCKETS:
        inb = (side >= lo) & (side < hi)
        by_size[_bucket_name(lo, hi)] = float(nme[inb].mean()) if inb.any() else None
    return {"faces": int(nme.size), "mean": float(nme.mean()) if nme.size else None,
            "median": float(np.median(nme)) if nme.size else None, "mean_by_size": by_size}
