"""Training images composed from the face library, with labels mapped exactly from the teacher's.

Every face arrives with its teacher box and landmarks in its own pixels; composing it into a
scene is an affine map (scale, small rotation, translation), applied once to the pixels and
exactly to the labels (the same helpers as the §3.3 augmentations). Three kinds of scene:

- paste: a face-free background with 1-30 faces pasted at 16-400 px (long side of the teacher
  box, log-uniform), blended with a feathered ellipse so no paste edge marks a face;
- zoom: a crop of a real photo, rescaled so that one of its faces gets a drawn size; the canvas
  rule of the augmentations keeps faces at least half inside;
- empty: a background alone (no faces), so that textures learn to stay negative.

Paste scenes also get 0-3 distractors: non-face patches (LFW's non-face crops, background
pieces) blended with the same feathered ellipse, unlabelled, so that the blend itself never
predicts a face.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.structures import Sample
from ..data.transforms import (BORDER_BGR, clip_to_canvas, cv2_matrix, rotation, scaling, transform_boxes,
                               transform_points, translation)
from .faces import LabelledPhoto

MIN_FACE, MAX_FACE = 16.0, 400.0


@dataclass
class FacePatch:
    """A face image with its teacher box / landmarks (landmarks NaN = unknown)."""

    image: np.ndarray
    box: np.ndarray  # [4]
    landmarks: np.ndarray  # [5, 2]


@dataclass
class SceneOptions:
    min_side: int = 480
    max_side: int = 800
    p_zoom: float = 0.3
    p_empty: float = 0.03
    max_rotation: float = 15.0


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def face_count(rng: np.random.Generator) -> int:
    """Mostly a few faces, sometimes a crowd (WIDER-like long tail)."""
    r = rng.random()
    if r < 0.3:
        return 1
    if r < 0.65:
        return int(rng.integers(2, 5))
    if r < 0.9:
        return int(rng.integers(5, 13))
    return int(rng.integers(13, 31))


def background_canvas(rng: np.random.Generator, backgrounds: list[np.ndarray], width: int, height: int) -> np.ndarray:
    src = backgrounds[int(rng.integers(len(backgrounds)))]
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.4, 1.0)
    cw, ch = max(8, int(sw * frac)), max(8, int(sh * frac))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    canvas = cv2.resize(src[y0:y0 + ch, x0:x0 + cw], (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    gain = rng.uniform(0.6, 1.3, size=3)  # colour cast, so backgrounds do not repeat exactly
    return np.clip(canvas.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def feathered_ellipse(height: int, width: int, feather: float = 0.18) -> np.ndarray:
    """Alpha in [0, 1]: 1 inside an ellipse filling the patch, fading to 0 at its border."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot((xx + 0.5 - width / 2) / (width / 2), (yy + 0.5 - height / 2) / (height / 2))
    return np.clip((1.0 - r) / feather, 0.0, 1.0)


def paste_face(canvas: np.ndarray, face: FacePatch, matrix: np.ndarray, alpha_source: np.ndarray) -> None:
    """Warp `face.image` by `matrix` (3x3, patch -> canvas) and alpha-blend it into `canvas`."""
    h, w = canvas.shape[:2]
    m = matrix[:2].astype(np.float64)
    m_cv = cv2_matrix(matrix)  # cv2 samples pixel centres (continuous-coordinate convention)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    src = face.image
    if scale < 0.5:  # pre-shrink: warpAffine alone would alias
        k = max(1, int(1 / scale))
        src = cv2.resize(src, (max(1, src.shape[1] // k), max(1, src.shape[0] // k)), interpolation=cv2.INTER_AREA)
        fx, fy = face.image.shape[1] / src.shape[1], face.image.shape[0] / src.shape[0]
        m_full = matrix @ np.diag([fx, fy, 1.0])
        m_cv = cv2_matrix(m_full)
        alpha_source = cv2.resize(alpha_source, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
    warped = cv2.warpAffine(src, m_cv, (w, h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(alpha_source, m_cv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = alpha[..., None]
    canvas[:] = (warped.astype(np.float32) * a + canvas.astype(np.float32) * (1 - a)).round().astype(np.uint8)


def face_matrix(face: FacePatch, size: float, cx: float, cy: float, angle: float) -> np.ndarray:
    """Patch -> canvas: the teacher box's long side becomes `size`, its centre lands on (cx, cy)."""
    b = face.box
    side = max(b[2] - b[0], b[3] - b[1])
    s = size / side
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return rotation(angle, cx, cy) @ translation(cx, cy) @ scaling(s) @ translation(-bx, -by)


def _overlaps(box: np.ndarray, placed: list[np.ndarray], limit: float = 0.05) -> bool:
    for p in placed:
        iw = min(box[2], p[2]) - max(box[0], p[0])
        ih = min(box[3], p[3]) - max(box[1], p[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            union = (box[2] - box[0]) * (box[3] - box[1]) + (p[2] - p[0]) * (p[3] - p[1]) - inter
            if inter / union > limit:
                return True
    return False


def paste_scene(rng: np.random.Generator, backgrounds: list[np.ndarray], pick_face, width: int, height: int,
                opts: SceneOptions, distractors: list[np.ndarray] | None = None) -> Sample:
    """A background with faces pasted; `pick_face(rng, size)` returns a FacePatch for a face size."""
    canvas = background_canvas(rng, backgrounds, width, height)
    n = face_count(rng)
    biggest = min(MAX_FACE, 0.8 * min(width, height))
    # Crowds hold smaller faces: the drawn size shrinks with the count, as in group photos.
    hi = max(MIN_FACE * 1.5, biggest / math.sqrt(max(1, n / 2)))
    boxes, lms, placed = [], [], []
    for _ in range(n):
        size = log_uniform(rng, MIN_FACE, hi)
        face = pick_face(rng, size)
        angle = rng.uniform(-opts.max_rotation, opts.max_rotation)
        for _try in range(20):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            m = face_matrix(face, size, cx, cy, angle)
            patch_box = transform_boxes(np.array([[0, 0, face.image.shape[1], face.image.shape[0]]], np.float32), m)[0]
            if not _overlaps(patch_box, placed):
                break
        else:
            continue
        alpha = feathered_ellipse(*face.image.shape[:2])
        paste_face(canvas, face, m, alpha)
        placed.append(patch_box)
        boxes.append(transform_boxes(face.box[None], m)[0])
        lms.append(transform_points(face.landmarks, m))
    for _ in range(int(rng.integers(0, 4)) if distractors else 0):
        patch = distractors[int(rng.integers(len(distractors)))]
        size = log_uniform(rng, MIN_FACE, min(300.0, 0.6 * min(width, height)))
        side = max(patch.shape[:2])
        for _try in range(10):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            m = rotation(rng.uniform(-30, 30), cx, cy) @ translation(cx, cy) @ scaling(size / side) @ \
                translation(-patch.shape[1] / 2, -patch.shape[0] / 2)
            patch_box = transform_boxes(np.array([[0, 0, patch.shape[1], patch.shape[0]]], np.float32), m)[0]
            if not _overlaps(patch_box, placed, 0.0):
                paste_face(canvas, FacePatch(patch, np.zeros(4), np.zeros((5, 2))), m,
                           feathered_ellipse(*patch.shape[:2]))
                placed.append(patch_box)
                break
    if not boxes:
        return Sample(canvas, np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros((0, 5), bool))
    lm = np.stack(lms)
    sample = Sample(canvas, np.stack(boxes), np.nan_to_num(lm, nan=-1.0), ~np.isnan(lm).any(-1))
    return clip_to_canvas(sample)


def zoom_scene(rng: np.random.Generator, photo: LabelledPhoto, width: int, height: int) -> Sample:
    """A crop of a real photo in which one of its faces is rescaled to a drawn size."""
    k = int(rng.integers(len(photo.boxes)))
    b = photo.boxes[k]
    side = max(b[2] - b[0], b[3] - b[1])
    size = log_uniform(rng, MIN_FACE * 1.5, min(MAX_FACE, 0.9 * min(width, height)))
    s = size / side
    cx, cy = (b[0] + b[2]) / 2 * s, (b[1] + b[3]) / 2 * s
    # Place the chosen face anywhere it fits inside the canvas.
    half = size / 2
    tx = rng.uniform(half, max(half, width - half)) - cx
    ty = rng.uniform(half, max(half, height - half)) - cy
    m = translation(tx, ty) @ scaling(s)
    if rng.random() < 0.5:  # mirror about the canvas centre
        m = translation(width, 0) @ scaling(-1.0, 1.0) @ m
    m_cv = cv2_matrix(m)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    # A constant border: a reflected one would mirror faces into the canvas without labels.
    image = cv2.warpAffine(photo.image, m_cv, (width, height), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=BORDER_BGR)
    boxes = transform_boxes(photo.boxes, m)
    lm = transform_points(np.nan_to_num(photo.landmarks, nan=-1.0), m)
    if m[0, 0] < 0:  # a mirror swaps left and right points: RetinaFace order is image-left first
        lm = lm[:, [1, 0, 2, 4, 3]]
    valid = np.ones(lm.shape[:2], bool)
    return clip_to_canvas(Sample(image, boxes, lm, valid))
