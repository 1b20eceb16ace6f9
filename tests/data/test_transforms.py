"""Augmentations keep boxes, landmarks and pixels consistent (§3.3)."""
import math

import numpy as np
import pytest

from maskface.data import synthetic
from maskface.data.landmark_sets import LEFT_EYE, RIGHT_EYE
from maskface.data.structures import Sample
from maskface.data.transforms import (
    LandmarkTrainTransform,
    WiderFaceTrainTransform,
    clip_to_canvas,
    color_distort,
    crop,
    filter_by_area,
    hflip,
    rescale,
    rotate,
)

SUBSETS = {5: synthetic.landmarks_5, 19: synthetic.landmarks_19, 68: lambda lm: lm}


def face_sample(k: int, seed: int = 0, size=(160, 128), faces=2, face_size=(36, 60)) -> Sample:
    rng = np.random.default_rng(seed)
    image, boxes, lm68 = synthetic.synth_image(rng, size[0], size[1], faces, face_size)
    lm = SUBSETS[k](lm68).astype(np.float32)
    valid = np.ones(lm.shape[:2], bool)
    if len(valid):
        valid[0, 1] = False  # one missing point must stay missing (and move with the permutation)
    return Sample(image, boxes, lm, valid)


def blob_sample(points, size=(96, 80), sigma=1.5) -> Sample:
    """A dark image with one Gaussian blob per point (centres in continuous coordinates)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    img = np.zeros((h, w), np.float64)
    for x, y in points:
        img += 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    img = np.clip(img, 0, 255).astype(np.uint8)
    pts = np.asarray(points, np.float32)[None]
    return Sample(np.repeat(img[:, :, None], 3, 2), np.array([[10, 10, 40, 30]], np.float32), pts,
                  np.ones(pts.shape[:2], bool))


def centroid(image: np.ndarray, around, radius=6) -> np.ndarray:
    g = image[:, :, 0].astype(np.float64)
    x0, y0 = (int(v) for v in around)
    ys, xs = np.mgrid[max(0, y0 - radius):y0 + radius + 1, max(0, x0 - radius):x0 + radius + 1]
    wgt = g[ys, xs]
    return np.array([((xs + 0.5) * wgt).sum() / wgt.sum(), ((ys + 0.5) * wgt).sum() / wgt.sum()])


@pytest.mark.parametrize("k", [5, 19, 68])
def test_flip_twice_is_identity(k):
    s = face_sample(k)
    back = hflip(hflip(s))
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.boxes, s.boxes)
    np.testing.assert_array_equal(back.landmarks, s.landmarks)
    np.testing.assert_array_equal(back.landmark_valid, s.landmark_valid)


@pytest.mark.parametrize("k", [5, 19, 68])
def test_flip_keeps_left_eye_on_image_left(k):
    s = face_sample(k)
    f = hflip(s)
    left, right = list(LEFT_EYE[k]), list(RIGHT_EYE[k])
    for lm in (s.landmarks, f.landmarks):
        assert (lm[:, left, 0].mean(1) < lm[:, right, 0].mean(1)).all()
    # Every point, not just the eyes: the flipped annotation is the annotation of the mirrored face.
    w = s.width
    for box, lm in zip(f.boxes, f.landmarks):
        expected = SUBSETS[k](synthetic.face_landmarks_68(box))
        np.testing.assert_allclose(lm, expected, atol=0.125 + 1e-6)
    # The missing point moved with the permutation: flipped index i is original perm[i].
    from maskface.data.landmark_sets import flip_permutation
    perm = flip_permutation(k)
    assert not f.landmark_valid[0, perm.index(1)] and f.landmark_valid.sum() == s.landmark_valid.sum()
    # Pixels agree: the flipped image is dark (an iris) at the flipped left-eye landmark.
    if k == 5:
        for lm in f.landmarks:
            x, y = lm[0]
            assert f.image[int(y), int(x)].max() < 80
    assert np.array_equal(f.image, s.image[:, ::-1]) and w == f.width


def test_rescale_matches_hand_computation_and_pixels():
    pts = [(30.25, 20.5), (61.0, 47.75)]
    s = blob_sample(pts)
    out = rescale(s, 1.7)
    assert out.image.shape[:2] == (round(80 * 1.7), round(96 * 1.7))
    np.testing.assert_allclose(out.landmarks[0], np.array(pts) * 1.7, atol=1e-4)
    np.testing.assert_allclose(out.boxes[0], [17, 17, 68, 51], atol=1e-4)
    for p in out.landmarks[0]:
        np.testing.assert_allclose(centroid(out.image, p, radius=8), p, atol=0.15)


def test_rotation_matches_hand_computation_and_pixels():
    pts = [(30.25, 20.5), (61.0, 47.75), (48.0, 40.0)]
    s = blob_sample(pts)
    cx, cy = 48.0, 40.0
    out = rotate(s, 90, center=(cx, cy))
    # 90 degrees counter-clockwise on screen (y down): (x, y) -> (cx + (y - cy), cy - (x - cx))
    hand = [(cx + (y - cy), cy - (x - cx)) for x, y in pts]
    np.testing.assert_allclose(out.landmarks[0], hand, atol=1e-4)
    # box 30x20 centred at (25, 20) becomes 20x30 centred at (28, 63)
    np.testing.assert_allclose(out.boxes[0], [18, 48, 38, 78], atol=1e-4)
    out30 = rotate(s, 30, center=(cx, cy))
    a = math.radians(30)
    hand30 = [(cx + math.cos(a) * (x - cx) + math.sin(a) * (y - cy),
               cy - math.sin(a) * (x - cx) + math.cos(a) * (y - cy)) for x, y in pts]
    np.testing.assert_allclose(out30.landmarks[0], hand30, atol=1e-4)
    for result in (out, out30):
        for p in result.landmarks[0]:
            np.testing.assert_allclose(centroid(result.image, p), p, atol=0.15)


def test_crop_rule_by_hand():
    """crop() keeps exactly the faces with >= 50% of their box inside, clipped; points outside
    the window are invalid, inside ones keep their validity."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        s = face_sample(19, seed=trial % 7, faces=3)
        x0, y0 = rng.uniform(-40, 120), rng.uniform(-40, 90)
        cw, ch = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        out = crop(s, x0, y0, cw, ch)
        b = s.boxes - [x0, y0, x0, y0]
        clipped = np.clip(b, 0, [cw, ch, cw, ch])
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        inside = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
        keep = (inside > 0) & (inside >= 0.5 * area)
        np.testing.assert_allclose(out.boxes, clipped[keep], atol=1e-3)
        lm = s.landmarks[keep] - [x0, y0]
        np.testing.assert_allclose(out.landmarks, lm, atol=1e-3)
        in_win = (lm[..., 0] >= 0) & (lm[..., 0] < cw) & (lm[..., 1] >= 0) & (lm[..., 1] < ch)
        np.testing.assert_array_equal(out.landmark_valid, s.landmark_valid[keep] & in_win)


def _check_canvas(out: Sample):
    h, w = out.height, out.width
    b = out.boxes
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    v = out.landmark_valid
    p = out.landmarks[v]
    assert ((p[:, 0] >= 0) & (p[:, 0] < w) & (p[:, 1] >= 0) & (p[:, 1] < h)).all()
    assert out.landmarks.shape[0] == b.shape[0] == v.shape[0]


@pytest.mark.parametrize("k", [5, 19, 68])
def test_recipes_never_leave_a_box_or_visible_landmark_outside(k):
    wider = WiderFaceTrainTransform(crop_size=96, scale_range=(0.5, 2.5), area_range=(4.0, 1e9))
    lmk = LandmarkTrainTransform(crop_size=96, face_size_range=(30, 140), max_rotation=30)
    n_partial = 0
    for seed in range(60):
        s = face_sample(k, seed=seed, faces=3)
        for t in (wider, lmk):
            out = t(s, np.random.default_rng(seed))
            _check_canvas(out)
            assert out.image.shape == (96, 96, 3) and out.image.dtype == np.uint8
            n_partial += int((~out.landmark_valid).sum() > (~s.landmark_valid).sum())
    assert n_partial > 0  # the check saw crops that cut through faces


def test_recipes_are_deterministic_given_the_generator():
    s = face_sample(5, faces=3)
    for t in (WiderFaceTrainTransform(crop_size=128), LandmarkTrainTransform(crop_size=128)):
        a, b = t(s, np.random.default_rng(7)), t(s, np.random.default_rng(7))
        c = t(s, np.random.default_rng(8))
        for x, y in ((a.image, b.image), (a.boxes, b.boxes), (a.landmarks, b.landmarks),
                     (a.landmark_valid, b.landmark_valid)):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a.image, c.image)


def test_wider_recipe_defaults_and_face_crop():
    s = face_sample(5, size=(300, 200), faces=2, face_size=(40, 70))
    out = WiderFaceTrainTransform()(s, np.random.default_rng(0))
    assert out.image.shape == (640, 640, 3)
    # Crop around a face at scale 1: that face is entirely inside, same size.
    t = WiderFaceTrainTransform(crop_size=128, scale_range=(1.0, 1.0), face_crop_prob=1.0, flip_prob=0.0,
                                color=False, area_range=(0, 1e9))
    for seed in range(20):
        out = t(s, np.random.default_rng(seed))
        sizes = out.boxes[:, 2:] - out.boxes[:, :2]
        original = s.boxes[:, 2:] - s.boxes[:, :2]
        assert any(np.allclose(sz, o, atol=1e-3) for sz in sizes for o in original)


def test_landmark_recipe_face_size_and_rotation():
    s = face_sample(68, size=(200, 200), faces=1, face_size=(60, 60))
    t = LandmarkTrainTransform(crop_size=480, flip_prob=0.0, color=False)
    for seed in range(10):
        out = t(s, np.random.default_rng(seed))
        assert len(out.boxes) == 1
        # distance between outer eye corners scales with the face: face resized to 150..450 px
        d0 = np.linalg.norm(s.landmarks[0, 45] - s.landmarks[0, 36])
        d1 = np.linalg.norm(out.landmarks[0, 45] - out.landmarks[0, 36])
        face = math.sqrt(np.prod(s.boxes[0, 2:] - s.boxes[0, :2]))
        assert 150 / face - 1e-3 <= d1 / d0 <= 450 / face + 1e-3
        v = out.landmarks[0, 45] - out.landmarks[0, 36]
        assert abs(math.degrees(math.atan2(-v[1], v[0]))) <= 30 + 1e-3


def test_area_filter_bounds():
    s = Sample(np.zeros((50, 50, 3), np.uint8), np.array([[0, 0, 10, 10], [0, 0, 11, 11], [0, 0, 30, 30]], np.float32),
               np.zeros((3, 5, 2), np.float32), np.zeros((3, 5), bool))
    out = filter_by_area(s, 0.4 * 16 ** 2, 2.5 * 406 ** 2)
    np.testing.assert_array_equal(out.boxes[:, 2], [11, 30])  # 100 < 102.4 <= 121
    assert len(filter_by_area(s, 0, 200).boxes) == 2


def test_clip_to_canvas_drops_mostly_outside_faces():
    s = Sample(np.zeros((40, 40, 3), np.uint8), np.array([[-30, 0, 10, 10], [-10, 0, 30, 10]], np.float32),
               np.array([[[-1, 5]], [[5, 5]]], np.float32), np.ones((2, 1), bool))
    out = clip_to_canvas(s)
    np.testing.assert_array_equal(out.boxes, [[0, 0, 30, 10]])  # 25% vs 75% inside
    assert out.landmark_valid.tolist() == [[True]]


def test_color_distort_is_deterministic_uint8():
    img = face_sample(5).image
    a = color_distort(img, np.random.default_rng(1))
    b = color_distort(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert any(not np.array_equal(color_distort(img, np.random.default_rng(s)), img) for s in range(5))


def test_recipes_accept_images_without_faces():
    s = Sample(np.zeros((50, 70, 3), np.uint8), np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros((0, 5), bool))
    for t in (WiderFaceTrainTransform(crop_size=64), LandmarkTrainTransform(crop_size=64)):
        out = t(s, np.random.default_rng(0))
        assert out.image.shape == (64, 64, 3) and out.boxes.shape == (0, 4) and out.landmarks.shape == (0, 5, 2)
