"""maskface.demo.retinaface_teacher: the consensus of teachers, the RetinaFace graph's pre- and
post-processing and the converter's error messages on scripted inputs whose answers are computed
by hand; the landmark order on a real photo only where the converted model is already cached
(it is made by a TensorFlow venv of ~1.3 GB, which these tests never install)."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from maskface.demo import retinaface_teacher as rt
from maskface.demo import sources
from maskface.demo.retinaface_teacher import ConsensusTeacher, RetinaFaceTeacher
from maskface.demo.teacher import TeacherFaces


def faces(boxes, landmarks, scores=None) -> TeacherFaces:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes), np.float32) if scores is None else np.asarray(scores, np.float32)
    return TeacherFaces(boxes, scores, np.asarray(landmarks, np.float32).reshape(-1, 5, 2))


class Scripted:
    """Returns fixed faces whatever it is shown, and records how it was called."""

    def __init__(self, found: TeacherFaces):
        self.found = found
        self.calls = []

    def __call__(self, image, threshold=0.5, scale=1.0, nms_iou=0.3):
        self.calls.append((threshold, scale, nms_iou))
        return self.found


IMAGE = np.zeros((200, 300, 3), np.uint8)
# primary: face A in [0, 0, 10, 10] (all points at (2, 2) + k), face B far away in [100, 100, 140, 140]
A_POINTS = np.array([[2, 2], [8, 2], [5, 5], [3, 8], [7, 8]], np.float64)
B_POINTS = np.array([[110, 110], [130, 110], [120, 120], [112, 130], [128, 130]], np.float64)
PRIMARY = faces([[0, 0, 10, 10], [100, 100, 140, 140]], [A_POINTS, B_POINTS], scores=[0.9, 0.8])


def test_consensus_is_the_mean_of_the_paired_faces():
    # other 1: a face on A with IoU exactly 0.5 (10x20 box over A's 10x10: 100 / 200), points 2 px right;
    # and a face that no primary face overlaps (ignored)
    other1 = Scripted(faces([[0, 0, 10, 20], [250, 0, 290, 40]],
                            [A_POINTS + [2, 0], np.full((5, 2), 260.0)]))
    # other 2: A again (box 10x10 shifted by 1 px: IoU 81 / 119 = 0.68), points 4 px down; and B (same box),
    # points 6 px left
    other2 = Scripted(faces([[1, 1, 11, 11], [100, 100, 140, 140]], [A_POINTS + [0, 4], B_POINTS - [6, 0]]))
    out = ConsensusTeacher(Scripted(PRIMARY), [other1, other2])(IMAGE)
    # A: mean of +0, +(2, 0), +(0, 4) -> +(2/3, 4/3); B: mean of +0 and -(6, 0) -> -(3, 0)
    np.testing.assert_allclose(out.landmarks[0], A_POINTS + [2 / 3, 4 / 3], atol=1e-5)
    np.testing.assert_allclose(out.landmarks[1], B_POINTS - [3, 0], atol=1e-5)
    np.testing.assert_array_equal(out.boxes, PRIMARY.boxes)
    np.testing.assert_array_equal(out.scores, PRIMARY.scores)


def test_faces_below_the_pairing_threshold_or_without_partner_keep_the_primary_points():
    # a 10x21 box over A: IoU 100 / 210 < 0.5, so not paired; nothing near B
    other = Scripted(faces([[0, 0, 10, 21]], [A_POINTS + [5, 5]]))
    out = ConsensusTeacher(Scripted(PRIMARY), [other])(IMAGE)
    np.testing.assert_allclose(out.landmarks, PRIMARY.landmarks)
    # a lower pair_iou pairs it: the mean is +(2.5, 2.5)
    out = ConsensusTeacher(Scripted(PRIMARY), [other], pair_iou=0.45)(IMAGE)
    np.testing.assert_allclose(out.landmarks[0], A_POINTS + [2.5, 2.5], atol=1e-5)
    np.testing.assert_allclose(out.landmarks[1], B_POINTS)


def test_consensus_with_teachers_that_find_nothing():
    empty = faces(np.zeros((0, 4)), np.zeros((0, 5, 2)))
    out = ConsensusTeacher(Scripted(PRIMARY), [Scripted(empty)])(IMAGE)
    np.testing.assert_allclose(out.landmarks, PRIMARY.landmarks)
    other = Scripted(PRIMARY)
    out = ConsensusTeacher(Scripted(empty), [other])(IMAGE)
    assert len(out) == 0 and out.landmarks.shape == (0, 5, 2)


def test_every_teacher_gets_the_same_call_arguments():
    primary, other = Scripted(PRIMARY), Scripted(PRIMARY)
    ConsensusTeacher(primary, [other])(IMAGE, threshold=0.7, scale=2.0, nms_iou=0.4)
    assert primary.calls == other.calls == [(0.7, 2.0, 0.4)]


# ------------------------------------------------------------------------------- graph in / out

def test_preprocess_pads_rgb_to_multiples_of_32():
    image = np.zeros((40, 70, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    blob, factors, padded = rt.preprocess(image)
    assert blob.shape == (1, 64, 96, 3) and blob.dtype == np.float32
    assert factors == (1.0, 1.0) and padded == (96, 64)
    assert blob[0, 39, 69].tolist() == [30.0, 20.0, 10.0]  # RGB, 0..255
    assert not blob[0, 40:].any() and not blob[0, :, 70:].any()  # zero padding, bottom and right
    blob, factors, padded = rt.preprocess(image, scale=0.5)  # 35 x 20
    assert blob.shape == (1, 32, 64, 3) and factors == (0.5, 0.5) and padded == (64, 32)


def test_decode_rows_maps_fractions_of_the_padded_input_to_original_pixels():
    # padded 96 x 64 input of an image resized by 0.5: x fractions * 96 / 0.5, y fractions * 64 / 0.5
    row = np.array([0.25, 0.5, 0.5, 1.0, 0.1, 0.2, 0.2, 0.2, 0.15, 0.3, 0.1, 0.4, 0.2, 0.4, 1.0, 0.9], np.float32)
    boxes, points, scores = rt.decode_rows(row[None], (0.5, 0.5), (96, 64))
    np.testing.assert_allclose(boxes, [[48, 64, 96, 128]], atol=1e-4)
    np.testing.assert_allclose(points[0], [[19.2, 25.6], [38.4, 25.6], [28.8, 38.4], [19.2, 51.2], [38.4, 51.2]],
                               atol=1e-4)
    np.testing.assert_allclose(scores, [0.9], atol=1e-6)


class FakeSession:
    """Stands in for the ONNX graph: returns fixed anchor rows [A, 16]."""

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.float32)
        self.inputs = []

    def run(self, names, feeds):
        assert names == [rt.GRAPH_ANCHORS]
        self.inputs.append(feeds["x:0"])
        return [self.rows]


def row(box, score, image_wh=(64, 32)):
    """A graph row for a box given in pixels of a 64 x 32 padded input (landmarks at the box centre)."""
    w, h = image_wh
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return [box[0] / w, box[1] / h, box[2] / w, box[3] / h] + [cx / w, cy / h] * 5 + [1.0, score]


def fake_teacher(rows) -> RetinaFaceTeacher:
    teacher = RetinaFaceTeacher.__new__(RetinaFaceTeacher)
    teacher.session, teacher.input_name = FakeSession(rows), "x:0"
    return teacher


def test_teacher_thresholds_suppresses_and_scales_back():
    # 60 x 30 image at scale 1 -> padded 64 x 32. Boxes a and b overlap at IoU 16*16 / (2*20*16 - 16*16) = 0.667
    a, b, c = [0, 0, 20, 16], [4, 0, 24, 16], [40, 0, 70, 16]  # c runs past the image: clipped to 60
    teacher = fake_teacher([row(a, 0.9), row(b, 0.8), row(c, 0.6), row([30, 0, 40, 10], 0.4)])
    image = np.zeros((30, 60, 3), np.uint8)
    out = teacher(image, threshold=0.5, nms_iou=0.3)
    np.testing.assert_allclose(out.boxes, [a, [40, 0, 60, 16]], atol=1e-4)
    np.testing.assert_allclose(out.scores, [0.9, 0.6], atol=1e-6)
    np.testing.assert_allclose(out.landmarks[:, :, 0], [[10] * 5, [55] * 5], atol=1e-4)  # points are not clipped
    assert len(teacher(image, threshold=0.5, nms_iou=0.7)) == 3  # IoU 0.667 kept at 0.7
    assert len(teacher(image, threshold=0.3, nms_iou=0.3)) == 3  # the 0.4 face too
    assert len(teacher(image, threshold=0.95)) == 0
    # scale 0.5: the 60 x 30 image becomes 30 x 15, padded 32 x 32; rows are fractions of that
    teacher = fake_teacher([row([0, 0, 16, 8], 0.9, image_wh=(32, 32))])
    out = teacher(image, scale=0.5)
    assert teacher.session.inputs[0].shape == (1, 32, 32, 3)
    np.testing.assert_allclose(out.boxes, [[0, 0, 32, 16]], atol=1e-4)


# ------------------------------------------------------------------------------- converter errors

def test_pip_failure_says_what_failed_and_what_to_do(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        failed = "pip" in cmd
        return SimpleNamespace(returncode=1 if failed else 0, stdout="",
                               stderr="ERROR: No matching distribution found for tensorflow-cpu==2.15.1"
                               if failed else "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(rt.ConversionError) as err:
        rt.converter_python(tmp_path)
    message = str(err.value)
    assert "tensorflow-cpu==2.15.1" in message and "No matching distribution" in message
    assert "package registry" in message and str(tmp_path / "retinaface" / "retinaface.onnx") in message


def test_installed_venv_is_reused_without_pip(tmp_path, monkeypatch):
    venv = tmp_path / rt.VENV_NAME
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "maskface-requirements.txt").write_text("\n".join(rt.TF_REQUIREMENTS) + "\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert rt.converter_python(tmp_path) == venv / "bin" / "python"


def test_conversion_failure_names_the_graph_and_the_venv(tmp_path, monkeypatch):
    graph = tmp_path / "frozen_graph.pb"
    graph.write_bytes(b"")
    monkeypatch.setattr(sources, "extract", lambda *a, **k: graph)
    monkeypatch.setattr(rt, "converter_python", lambda cache: tmp_path / "venv" / "bin" / "python")
    monkeypatch.setattr(subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=1, stdout="", stderr="ValueError: bad graph"))
    with pytest.raises(rt.ConversionError) as err:
        rt.retinaface_onnx(tmp_path)
    assert "tf2onnx could not convert" in str(err.value) and "bad graph" in str(err.value)
    assert not (tmp_path / "retinaface" / "retinaface.onnx").exists()


# ------------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def retinaface():
    path = sources.default_cache() / "retinaface" / rt.ONNX_NAME
    if not path.is_file():
        pytest.skip(f"the converted RetinaFace model is not cached at {path} (it is made once by "
                    "maskface.demo.retinaface_teacher.retinaface_onnx(), which installs TensorFlow into a cache venv)")
    return RetinaFaceTeacher(path)


@pytest.fixture(scope="module")
def photo():
    import cv2
    import matplotlib.cbook

    return cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def test_landmark_order_on_a_photo(retinaface, photo):
    """Left eye, right eye, nose, left and right mouth corner, image left first, on the image and its mirror."""
    for image in (photo, np.ascontiguousarray(photo[:, ::-1])):
        found = retinaface(image, threshold=0.9)
        assert len(found) == 1
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = found.landmarks[0]
        assert lx < nx < rx and mlx < mrx  # image left first
        assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
        x1, y1, x2, y2 = found.boxes[0]
        assert (x1 < found.landmarks[0, :, 0]).all() and (found.landmarks[0, :, 0] < x2).all()
        assert (y1 < found.landmarks[0, :, 1]).all() and (found.landmarks[0, :, 1] < y2).all()


def test_teacher_postprocessing_agrees_with_the_graphs_own_nms(retinaface, photo):
    """The graph's NonMaxSuppression (score >= 0.5, IoU 0.4) and the teacher's threshold + NMS give the same faces."""
    blob, factors, padded = rt.preprocess(photo)
    graph_rows = retinaface.session.run([rt.GRAPH_FACES], {retinaface.input_name: blob})[0]
    boxes, points, scores = rt.decode_rows(graph_rows, factors, padded)
    out = retinaface(photo, threshold=0.5, nms_iou=0.4)
    np.testing.assert_allclose(out.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(out.landmarks, points, atol=1e-3)


def test_demo_data_teacher_composition(monkeypatch, tmp_path):
    """`demo-data --landmark-teachers centerface+retinaface --flip-average-landmarks` labels with the
    consensus of the two flip-averaged teachers, CenterFace first (it decides faces and boxes)."""
    from maskface.demo import build
    from maskface.demo.teacher import FlipAveragedTeacher

    monkeypatch.setattr(build.sources, "extract", lambda *a, **k: tmp_path / "centerface.onnx")
    monkeypatch.setattr(build, "CenterFaceTeacher", lambda path: ("centerface", path))
    monkeypatch.setattr(rt, "retinaface_onnx", lambda cache: tmp_path / "retinaface.onnx")
    monkeypatch.setattr(rt, "RetinaFaceTeacher", lambda path: ("retinaface", path))
    opts = build.DemoDataOptions(out=str(tmp_path), landmark_teachers="centerface+retinaface",
                                 flip_average_landmarks=True)
    teacher = build.make_teacher(opts, tmp_path)
    assert isinstance(teacher, ConsensusTeacher) and isinstance(teacher.primary, FlipAveragedTeacher)
    assert teacher.primary.teacher == ("centerface", tmp_path / "centerface.onnx")
    assert [t.teacher for t in teacher.others] == [("retinaface", tmp_path / "retinaface.onnx")]
    assert build.make_teacher(build.DemoDataOptions(out=str(tmp_path)), tmp_path)[0] == "centerface"
    with pytest.raises(ValueError, match="choose one of centerface, centerface\\+retinaface"):
        build.make_teacher(build.DemoDataOptions(out=str(tmp_path), landmark_teachers="mtcnn"), tmp_path)
