"""Training augmentations of §3.3, on raw samples (uint8 BGR image + numpy boxes / landmarks).

Every geometric step is an affine map of continuous pixel coordinates (maskface.data.structures:
pixel j covers [j, j+1)), applied once to the image (cv2.warpAffine, one interpolation for the
whole rescale + rotation + crop chain) and exactly to the annotations:

- landmarks: p' = A p + t;
- boxes: a box is taken as the ellipse inscribed in it, and the new box is the bounding box of
  the mapped ellipse: centre c' = A c + t, half-sizes hx' = hypot(A00 hx, A01 hy),
  hy' = hypot(A10 hx, A11 hy). Exact for scaling / translation / flips; under rotation it grows
  a face box much less than the box of the rotated corners would (faces are round, not square).

Canvas rule (after every warp / crop, see `clip_to_canvas`):
- a box is clipped to the canvas and kept only when at least `min_visible` (default 0.5) of its
  area lies inside; otherwise the face is dropped with its landmarks ("mostly outside");
- a landmark outside [0, W) x [0, H) is marked invalid (its coordinates are left as computed).
So no returned box extends beyond the canvas and no valid landmark lies outside it.

Recipes:
- WiderFaceTrainTransform: rescale by U(0.5, 2.5), 640x640 crop (half the time uniformly placed,
  half the time placed to contain a random face), drop boxes whose area is outside
  [0.4*16^2, 2.5*406^2] (in the crop's pixels), horizontal flip (p 0.5) with the landmark set's
  permutation, colour distortion.
- LandmarkTrainTransform (AFLW / 300W): a random face resized to U(150, 450) px, rotated by
  U(-30, 30) degrees about its centre, a 480x480 crop containing it, flip, colour distortion.
All randomness comes from the numpy Generator passed in: same generator state, same output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from maskface.config import WIDER_AREA_RANGE, InputConfig
from maskface.data.landmark_sets import flip_landmarks, flip_permutation
from maskface.data.structures import Sample

# Padding colour: the normalisation mean, BGR, so padded pixels become ~0 after to_tensor.
BORDER_BGR = tuple(float(round(v)) for v in reversed(InputConfig().pixel_mean))


# ---------------------------------------------------------------- affine helpers (3x3 matrices)

def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float | None = None) -> np.ndarray:
    return np.diag([sx, sx if sy is None else sy, 1.0])


def rotation(angle_deg: float, cx: float, cy: float) -> np.ndarray:
    """Rotation by `angle_deg` counter-clockwise as seen on screen (y points down) about (cx, cy)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    r = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return translation(cx, cy) @ r @ translation(-cx, -cy)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    p = points.astype(np.float64)
    out = p @ m[:2, :2].T + m[:2, 2]
    return out.astype(np.float32)


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bounding boxes of the mapped inscribed ellipses (see the module docstring)."""
    m = np.asarray(matrix, np.float64)
    b = boxes.astype(np.float64).reshape(-1, 4)
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1) @ m[:2, :2].T + m[:2, 2]
    hx, hy = (b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2
    ex = np.hypot(m[0, 0] * hx, m[0, 1] * hy)
    ey = np.hypot(m[1, 0] * hx, m[1, 1] * hy)
    return np.stack([c[:, 0] - ex, c[:, 1] - ey, c[:, 0] + ex, c[:, 1] + ey], 1).astype(np.float32)


def cv2_matrix(matrix: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> cv2's (pixel centres at integers) 2x3 matrix."""
    m = np.asarray(matrix, np.float64)
    a, t = m[:2, :2], m[:2, 2]
    return np.concatenate([a, (t + a @ [0.5, 0.5] - 0.5)[:, None]], 1)


# ---------------------------------------------------------------- elementary transforms

def clip_to_canvas(sample: Sample, min_visible: float = 0.5) -> Sample:
    """Enforce the canvas rule: clip boxes, drop mostly-outside faces, invalidate outside points."""
    h, w = sample.height, sample.width
    b = sample.boxes
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    clipped = np.stack([np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h),
                        np.clip(b[:, 2], 0, w), np.clip(b[:, 3], 0, h)], 1).astype(np.float32)
    inside = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    keep = (inside > 0) & (inside >= min_visible * area)
    lm = sample.landmarks
    in_canvas = (lm[..., 0] >= 0) & (lm[..., 0] < w) & (lm[..., 1] >= 0) & (lm[..., 1] < h)
    valid = sample.landmark_valid & in_canvas
    return Sample(sample.image, clipped[keep], lm[keep], valid[keep])


def warp_affine(sample: Sample, matrix: np.ndarray, out_size: tuple[int, int],
                border_value=BORDER_BGR, interpolation: int = cv2.INTER_LINEAR,
                min_visible: float = 0.5) -> Sample:
    """Map image and annotations by `matrix` (3x3 or 2x3, continuous coordinates) onto a
    canvas of out_size = (width, height), then apply the canvas rule."""
    m = np.asarray(matrix, np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    w, h = int(out_size[0]), int(out_size[1])
    image = cv2.warpAffine(sample.image, cv2_matrix(m), (w, h), flags=interpolation,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
    out = Sample(image, transform_boxes(sample.boxes, m), transform_points(sample.landmarks, m),
                 sample.landmark_valid.copy())
    return clip_to_canvas(out, min_visible)


def rescale(sample: Sample, factor: float, **kwargs) -> Sample:
    """Scale image and annotations by `factor` (coordinates multiply by exactly `factor`)."""
    size = (max(1, round(sample.width * factor)), max(1, round(sample.height * factor)))
    return warp_affine(sample, scaling(factor), size, **kwargs)


def crop(sample: Sample, x0: float, y0: float, width: int, height: int, **kwargs) -> Sample:
    """The window [x0, x0 + width) x [y0, y0 + height); parts outside the image are padded."""
    return warp_affine(sample, translation(-x0, -y0), (width, height), **kwargs)


def rotate(sample: Sample, angle_deg: float, center: tuple[float, float] | None = None, **kwargs) -> Sample:
    """Rotate about `center` (default: the image centre) on a canvas of the same size."""
    cx, cy = center if center is not None else (sample.width / 2.0, sample.height / 2.0)
    return warp_affine(sample, rotation(angle_deg, cx, cy), (sample.width, sample.height), **kwargs)


def hflip(sample: Sample) -> Sample:
    """Mirror x -> W - x; landmarks are reordered with the set's permutation (landmark_sets)."""
    w = sample.width
    image = np.ascontiguousarray(sample.image[:, ::-1])
    b = sample.boxes
    boxes = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1).astype(np.float32).reshape(-1, 4)
    k = sample.num_landmarks
    if k == 0:
        return Sample(image, boxes, sample.landmarks.copy(), sample.landmark_valid.copy())
    perm = list(flip_permutation(k))
    return Sample(image, boxes, flip_landmarks(sample.landmarks, w), sample.landmark_valid[:, perm].copy())


def filter_by_area(sample: Sample, min_area: float, max_area: float) -> Sample:
    b = sample.boxes
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return sample.select((area >= min_area) & (area <= max_area))


def color_distort(image: np.ndarray, rng: np.random.Generator, brightness: float = 32.0,
                  contrast: tuple[float, float] = (0.5, 1.5), saturation: tuple[float, float] = (0.5, 1.5),
                  hue: float = 18.0) -> np.ndarray:
    """Photometric distortion (SSD / RetinaFace style): each of brightness, contrast, saturation
    and hue changes with probability 0.5; contrast goes before or after the HSV part at random.
    `hue` is in OpenCV 8-bit hue units (180 = full circle). uint8 BGR in, uint8 BGR out."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += rng.uniform(-brightness, brightness)
    contrast_first = rng.random() < 0.5
    contrast_factor = rng.uniform(*contrast) if rng.random() < 0.5 else None
    sat_factor = rng.uniform(*saturation) if rng.random() < 0.5 else None
    hue_shift = rng.uniform(-hue, hue) if rng.random() < 0.5 else None
    if contrast_first and contrast_factor is not None:
        img *= contrast_factor
    if sat_factor is not None or hue_shift is not None:
        hsv = cv2.cvtColor(np.clip(img, 0, 255) / 255.0, cv2.COLOR_BGR2HSV)  # H in [0, 360)
        if sat_factor is not None:
            hsv[:, :, 1] = np.clip(hsv[:, :, 1] * sat_factor, 0.0, 1.0)
        if hue_shift is not None:
            hsv[:, :, 0] = np.mod(hsv[:, :, 0] + hue_shift * 2.0, 360.0)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0
    if not contrast_first and contrast_factor is not None:
        img *= contrast_factor
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    lo, hi = min(a, b), max(a, b)
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _window_start(rng: np.random.Generator, lo: float, hi: float, size: float) -> float:
    """Start of a window of `size` that contains [lo, hi] (or lies inside it when larger)."""
    return _uniform(rng, hi - size, lo)


# ---------------------------------------------------------------- recipes

@dataclass
class WiderFaceTrainTransform:
    """§3.3 WIDER FACE augmentation: rescale, crop, area filter, flip, colour distortion."""

    crop_size: int = 640
    scale_range: tuple[float, float] = (0.5, 2.5)
    face_crop_prob: float = 0.5
    flip_prob: float = 0.5
    color: bool = True
    area_range: tuple[float, float] = WIDER_AREA_RANGE
    min_visible: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.crop_size
        s = float(rng.uniform(*self.scale_range))
        boxes = sample.boxes * s
        if len(boxes) and rng.random() < self.face_crop_prob:
            x1, y1, x2, y2 = boxes[int(rng.integers(len(boxes)))]
            x0, y0 = _window_start(rng, x1, x2, c), _window_start(rng, y1, y2, c)
        else:
            x0 = _window_start(rng, 0.0, sample.width * s, c)
            y0 = _window_start(rng, 0.0, sample.height * s, c)
        out = warp_affine(sample, translation(-x0, -y0) @ scaling(s), (c, c), min_visible=self.min_visible)
        out = filter_by_area(out, *self.area_range)
        return flip_and_colour(out, rng, self.flip_prob, self.color)


def flip_and_colour(sample: Sample, rng: np.random.Generator, flip_prob: float, color: bool) -> Sample:
    """The last two §3.3 steps shared by both training transforms: random flip, colour distortion."""
    if rng.random() < flip_prob:
        sample = hflip(sample)
    if color:
        sample = Sample(color_distort(sample.image, rng), sample.boxes, sample.landmarks, sample.landmark_valid)
    return sample


@dataclass
class LandmarkTrainTransform:
    """§3.3 AFLW / 300W augmentation: a random face resized to 150-450 px, rotated by up to
    ±30°, a 480x480 crop containing it (as far as it fits), flip, colour distortion."""

    crop_size: int = 480
    face_size_range: tuple[float, float] = (150.0, 450.0)
    max_rotation: float = 30.0
    flip_prob: float = 0.5
    color: bool = True
    min_visible: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        c = self.crop_size
        if len(sample.boxes) == 0:
            x0 = _window_start(rng, 0.0, sample.width, c)
            y0 = _window_start(rng, 0.0, sample.height, c)
            m = translation(-x0, -y0)
        else:
            x1, y1, x2, y2 = sample.boxes[int(rng.integers(len(sample.boxes)))].astype(np.float64)
            size = math.sqrt(max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6))
            s = float(rng.uniform(*self.face_size_range)) / size
            angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
            cx, cy = (x1 + x2) / 2 * s, (y1 + y2) / 2 * s
            m = rotation(angle, cx, cy) @ scaling(s)
            fx1, fy1, fx2, fy2 = transform_boxes(np.array([[x1, y1, x2, y2]]), m)[0]
            x0, y0 = _window_start(rng, fx1, fx2, c), _window_start(rng, fy1, fy2, c)
            m = translation(-x0, -y0) @ m
        out = warp_affine(sample, m, (c, c), min_visible=self.min_visible)
        return flip_and_colour(out, rng, self.flip_prob, self.color)


@dataclass
class Resize:
    """Evaluation: rescale by a fixed factor (1.0 = identity), no randomness."""

    factor: float = 1.0

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        return sample if self.factor == 1.0 else rescale(sample, self.factor)


@dataclass
class MaxSide:
    """Evaluation: shrink so that the longer side is at most `max_side` (never enlarges)."""

    max_side: int = 1024

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        factor = self.max_side / max(sample.width, sample.height)
        return sample if factor >= 1.0 else rescale(sample, factor)
