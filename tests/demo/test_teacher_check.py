"""maskface.demo.teacher_check on a scripted teacher whose error is known by hand.

The fake teacher returns the stored face (box + five points) of whatever it is shown, with every point
moved DX pixels to the right of where it is in the image it was given. On the image itself that is
DX from the label; on the mirror image the points are moved right there, i.e. left after mirroring
back, so the two passes are 2 * DX apart. A marker pixel in the top-left corner tells the teacher
whether it sees the mirror image.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from maskface.demo.teacher import FlipAveragedTeacher, TeacherFaces, mirror_back
from maskface.demo.teacher_check import teacher_repeatability

WIDTH, HEIGHT, DX = 200, 120, 1.5
# one 60 px face (inter-ocular distance 20 px: eyes at x 80 and 100)
BOX = np.array([[60.0, 20.0, 120.0, 80.0]])
POINTS = np.array([[[80.0, 40.0], [100.0, 40.0], [90.0, 52.0], [82.0, 64.0], [98.0, 64.0]]])


class ScriptedTeacher:
    def __call__(self, image, threshold=0.5, scale=1.0, nms_iou=0.3):
        mirrored = image[0, -1, 0] == 255  # the marker moved to the right edge
        boxes, points = BOX.copy(), POINTS.copy()
        if mirrored:  # where the face is in the mirror image (left / right points swapped)
            boxes[:, [0, 2]] = WIDTH - BOX[:, [2, 0]]
            points = points[:, [1, 0, 2, 4, 3]]
            points[..., 0] = WIDTH - points[..., 0]
        points[..., 0] += DX
        return TeacherFaces(boxes.astype(np.float32), np.ones(1, np.float32), points.astype(np.float32))


@pytest.fixture()
def records(tmp_path):
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[0, 0] = 255
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), image)
    small = SimpleNamespace(image_path=path, boxes=np.array([[0.0, 0.0, 10.0, 10.0]]),  # < 20 px: skipped
                            landmarks=POINTS.copy(), landmark_valid=np.ones((1, 5), bool))
    face = SimpleNamespace(image_path=path, boxes=BOX.copy(), landmarks=POINTS.copy(),
                           landmark_valid=np.ones((1, 5), bool))
    return [face, small]


def test_repeatability_matches_the_hand_computed_errors(records):
    out = teacher_repeatability(ScriptedTeacher(), records, progress=False)
    inter_ocular = 20.0
    assert out["relabel"]["faces"] == 1 and out["mirror"]["faces"] == 1
    assert out["relabel"]["mean"] == pytest.approx(DX / inter_ocular)
    assert out["mirror"]["mean"] == pytest.approx(2 * DX / inter_ocular)
    assert out["mirror"]["mean_by_size"]["20-64"] == pytest.approx(2 * DX / inter_ocular)
    assert out["mirror"]["mean_by_size"]["64-224"] is None


def test_faces_without_all_labels_are_left_out(records):
    records[0].landmark_valid[0, 2] = False
    out = teacher_repeatability(ScriptedTeacher(), records, progress=False)
    assert out["relabel"]["faces"] == 0 and out["relabel"]["mean"] is None


def test_mirror_back_is_its_own_inverse():
    boxes, points = mirror_back(BOX, POINTS, WIDTH)
    assert boxes.tolist() == [[80.0, 20.0, 140.0, 80.0]]
    again, points_again = mirror_back(boxes, points, WIDTH)
    np.testing.assert_allclose(again, BOX)
    np.testing.assert_allclose(points_again, POINTS)


def test_flip_averaging_cancels_a_mirror_asymmetric_error(records):
    """The scripted teacher's +DX shift flips sign on the mirror pass: the average is the true face."""
    image = cv2.imread(str(records[0].image_path))
    single = ScriptedTeacher()(image)
    averaged = FlipAveragedTeacher(ScriptedTeacher())(image)
    np.testing.assert_allclose(single.landmarks[..., 0] - POINTS[..., 0], DX)
    np.testing.assert_allclose(averaged.landmarks, POINTS, atol=1e-5)
    np.testing.assert_array_equal(averaged.boxes, single.boxes)  # boxes and scores from the first pass
    out = teacher_repeatability(FlipAveragedTeacher(ScriptedTeacher()), records, progress=False)
    assert out["mirror"]["mean"] == pytest.approx(0.0, abs=1e-6) and out["relabel"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_flip_averaging_keeps_faces_without_a_mirror_partner(records):
    class OneSided(ScriptedTeacher):
        def __call__(self, image, threshold=0.5, scale=1.0, nms_iou=0.3):
            if image[0, -1, 0] == 255:  # finds nothing on the mirror image
                return TeacherFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
            return super().__call__(image, threshold, scale, nms_iou)

    image = cv2.imread(str(records[0].image_path))
    out = FlipAveragedTeacher(OneSided())(image)
    np.testing.assert_allclose(out.landmarks[..., 0] - POINTS[..., 0], DX)
