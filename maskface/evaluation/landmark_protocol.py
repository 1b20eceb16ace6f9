"""The paper's landmark protocol (§4.2): predictions of a whole model on AFLW / 300W images.

Settings of the multi-task comparison (Tables 5 and 6):

- each image is resized so that its shorter side is 640 px (``MIN_SIDE``; up or down, no cap);
- no test-time augmentation; the model's usual inference (score threshold, NMS 0.4);
- every detection is written with its score; the evaluator (``evaluate_landmarks``) gives each
  ground-truth face the *most confident* detection whose IoU with it is >= the protocol's IoU, and
  a face without one counts as a failure;
- IoU 0.3 for AFLW-5 (the 5-point comparison with RetinaFace / MTCNN), 0.4 for AFLW-19 and 300W;
- normalisers: the face box, sqrt(w * h), for AFLW; the inter-ocular distance (outer eye corners)
  for 300W.

AFLW-5 scores a 5-point model (trained on WIDER FACE) on AFLW's 19-point annotation reduced to
its 5 matching points: left / right eye centre (7, 10), nose tip (13), left / right mouth corner
(15, 17) (index order of ``maskface.data.landmark_sets``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from maskface.evaluation.landmarks import LandmarkFile, LandmarkImage

MIN_SIDE = 640
AFLW19_TO_5 = (7, 10, 13, 15, 17)


@dataclass(frozen=True)
class LandmarkProtocol:
    name: str
    dataset: str  # the data kind it reads: aflw or 300w
    num_landmarks: int  # of the model (and of the ground truth after `gt_points`)
    iou_threshold: float
    normaliser: str
    gt_points: tuple[int, ...] | None = None  # indices kept from the annotation (None: all)


PROTOCOLS = {
    "aflw5": LandmarkProtocol("aflw5", "aflw", 5, 0.3, "box", AFLW19_TO_5),
    "aflw19": LandmarkProtocol("aflw19", "aflw", 19, 0.4, "box"),
    "300w": LandmarkProtocol("300w", "300w", 68, 0.4, "interocular"),
}


def get_protocol(name: str) -> LandmarkProtocol:
    try:
        return PROTOCOLS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown landmark protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None


def image_id(image_path: Path, root: Path) -> str:
    """The image's path relative to the data root (posix), the key both files share."""
    try:
        return Path(image_path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(image_path).as_posix()


def ground_truth_file(records: Iterable, root: Path, protocol: LandmarkProtocol) -> LandmarkFile:
    """The ground truth of FaceRecords as a LandmarkFile (points reduced for AFLW-5)."""
    images = []
    for rec in records:
        lms, valid = rec.landmarks, rec.landmark_valid
        if protocol.gt_points is not None:
            lms, valid = lms[:, list(protocol.gt_points)], valid[:, list(protocol.gt_points)]
        if lms.shape[1] != protocol.num_landmarks:
            raise ValueError(f"{rec.source}: {lms.shape[1]} landmarks, protocol {protocol.name} expects "
                             f"{protocol.num_landmarks} (is the data set the right one: {protocol.dataset}?)")
        images.append(LandmarkImage(image_id(rec.image_path, root), np.asarray(rec.boxes, np.float64),
                                    np.asarray(lms, np.float64), None, np.asarray(valid, bool)))
    return LandmarkFile(protocol.num_landmarks, images)


def prediction_file(predict: Callable[[np.ndarray], dict], records: Iterable, root: Path,
                    num_landmarks: int, read_image: Callable[[Path], np.ndarray], progress=None) -> LandmarkFile:
    """Every detection of ``predict(image_bgr)`` (original pixels) with its score and landmarks."""
    images = []
    for rec in (records if progress is None else progress(records)):
        out = predict(read_image(rec.image_path))
        n = len(out["scores"])
        images.append(LandmarkImage(
            image_id(rec.image_path, root), np.asarray(out["boxes"], np.float64).reshape(n, 4),
            np.asarray(out["landmarks"], np.float64).reshape(n, num_landmarks, 2),
            np.asarray(out["scores"], np.float64).reshape(n)))
    return LandmarkFile(num_landmarks, images)


def protocol_predictor(model, device: str = "cpu"):
    """The §4.2 predictor: shorter side resized to 640, no cap on the longer side, no TTA."""
    from maskface.engine.predictor import Predictor

    return Predictor(model, device=device, max_side=None, min_side=MIN_SIDE)
