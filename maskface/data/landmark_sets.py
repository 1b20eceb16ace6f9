"""The three landmark sets MaskFace is trained on, and their horizontal-flip permutations.

Index conventions (all coordinates are image pixels, "left" means the image's left):
- 5 points (WIDER FACE, RetinaFace annotations): left eye, right eye, nose tip, left mouth
  corner, right mouth corner.
- 19 points (AFLW, as in HRNet-Facial-Landmark-Detection): 0-2 left brow, 3-5 right brow,
  6-8 left eye, 9-11 right eye, 12-14 nose (left, tip, right), 15-17 mouth (left, centre, right),
  18 chin.
- 68 points (300W / iBUG): 0-16 jaw, 17-21 left brow, 22-26 right brow, 27-35 nose,
  36-41 left eye, 42-47 right eye, 48-67 mouth.

A flip maps image x to (W - x); afterwards point i of the flipped face is point perm[i] of the
original, so that index 0 of the 5-point set is again the eye on the image's left.
"""
from __future__ import annotations

import numpy as np


def _permutation(num_points: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(num_points))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


_PAIRS_68 = (
    [(i, 16 - i) for i in range(8)]  # jaw
    + [(17 + i, 26 - i) for i in range(5)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64), (61, 63), (67, 65)]  # mouth
)

FLIP_PERMUTATIONS: dict[int, tuple[int, ...]] = {
    5: _permutation(5, [(0, 1), (3, 4)]),
    19: _permutation(19, [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]),
    68: _permutation(68, _PAIRS_68),
}

# Indices of the points of the eye on the image's left / right (used by tests and by the
# inter-ocular normaliser: 300W uses the outer corners 36 and 45).
LEFT_EYE = {5: (0,), 19: (6, 7, 8), 68: tuple(range(36, 42))}
RIGHT_EYE = {5: (1,), 19: (9, 10, 11), 68: tuple(range(42, 48))}
OUTER_EYE_CORNERS_68 = (36, 45)


def flip_permutation(num_landmarks: int) -> tuple[int, ...]:
    try:
        return FLIP_PERMUTATIONS[num_landmarks]
    except KeyError:
        raise ValueError(
            f"no horizontal-flip permutation for {num_landmarks} landmarks; known sets: "
            f"{sorted(FLIP_PERMUTATIONS)} (add one to maskface/data/landmark_sets.py)"
        ) from None


def flip_landmarks(landmarks: np.ndarray, width: float) -> np.ndarray:
    """Flip [..., K, 2] landmarks of an image `width` pixels wide and reorder left/right points.

    Missing points (marked by the caller's validity mask) are flipped too; callers keep the mask
    aligned by permuting it with the same permutation.
    """
    perm = list(flip_permutation(landmarks.shape[-2]))
    out = landmarks[..., perm, :].copy()
    out[..., 0] = width - out[..., 0]
    return out
