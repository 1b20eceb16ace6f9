"""The paper's Table 2 protocol for AFW and PASCAL faces: VOC AP at IoU 0.5 over all faces pooled,
with the face-eval toolbox's ignore flags and small faces (< 30 x 30 px) counting neither way.

Annotation and detection formats: ``maskface.data.face_eval``. An annotated image without any
detection contributes only missed faces; detections on images that are not annotated are an
error (the wrong list was passed). Not reproduced from the toolbox: its optional linear
re-calibration of detection boxes to the annotation style (``--nit``), which changes the boxes
being scored rather than the scoring.
"""
from __future__ import annotations

from maskface.data.face_eval import FaceEvalImage
from maskface.evaluation.ap import PooledAPResult, pooled_detection_ap


def evaluate_face_eval(gt: list[FaceEvalImage], detections: dict, iou_threshold: float = 0.5) -> PooledAPResult:
    """Pooled VOC AP of ``detections`` ({stem: (boxes, scores)}) against the annotated images."""
    stems = [im.stem for im in gt]
    if len(set(stems)) != len(stems):
        raise ValueError("the annotation lists an image twice")
    unknown = sorted(set(detections) - set(stems))
    if unknown:
        raise ValueError(f"{len(unknown)} detected images are not in the annotation, e.g. {unknown[:5]} "
                         "(AFW and PASCAL faces have separate annotation files)")
    empty = ((), ())
    boxes = [detections.get(s, empty)[0] for s in stems]
    scores = [detections.get(s, empty)[1] for s in stems]
    return pooled_detection_ap([im.boxes for im in gt], boxes, scores, iou_threshold,
                               gt_ignore=[im.ignore for im in gt])
