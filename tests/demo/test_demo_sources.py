"""The demo model's sources: teacher decoding, the DCGAN, the CenterFace trunk transplant, and
labels that follow the pixels exactly when faces are composed into scenes."""
import cv2
import numpy as np
import pytest
import torch

from maskface.config import InputConfig, get_config
from maskface.data.transforms import rotation, scaling, translation
from maskface.demo.centerface_backbone import centerface_state_dict
from maskface.demo.compose import FacePatch, face_matrix, feathered_ellipse, paste_face
from maskface.demo.faces import GanFaces, label_photo, label_small_face
from maskface.demo.teacher import CenterFaceTeacher, dynamic_shape_model
from maskface.modeling.backbone import build_backbone


def grace_hopper():
    import matplotlib.cbook

    return cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))


@pytest.fixture(scope="module")
def teacher(centerface_onnx):
    return CenterFaceTeacher(centerface_onnx)


def test_teacher_finds_grace_hopper_with_ordered_landmarks(teacher):
    image = grace_hopper()
    faces = teacher(image)
    assert len(faces) == 1 and faces.scores[0] > 0.8
    box, pts = faces.boxes[0], faces.landmarks[0]
    # All five points inside the box; eyes above the nose above the mouth; image-left points first.
    assert ((pts >= box[:2]) & (pts <= box[2:])).all()
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]
    assert max(pts[0, 1], pts[1, 1]) < pts[2, 1] < min(pts[3, 1], pts[4, 1])
    # Rescaling the image scales the labels (the decoding is in original pixels).
    half = teacher(cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    assert np.abs(half.boxes[0] * 2 - box).max() < 0.06 * (box[2] - box[0])


def test_teacher_on_mirrored_photo_mirrors_boxes(teacher):
    image = grace_hopper()
    w = image.shape[1]
    a, b = teacher(image), teacher(image[:, ::-1].copy())
    mirrored = np.array([w - a.boxes[0, 2], a.boxes[0, 1], w - a.boxes[0, 0], a.boxes[0, 3]])
    assert np.abs(b.boxes[0] - mirrored).max() < 0.05 * (a.boxes[0, 2] - a.boxes[0, 0])


def test_dynamic_shape_model_accepts_any_size(centerface_onnx):
    import onnx

    graph = onnx.load_from_string(dynamic_shape_model(centerface_onnx)).graph
    assert [i.name for i in graph.input] == ["input.1"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]


def test_gan_faces_are_deterministic_faces(gan_weights, teacher):
    gan = GanFaces(gan_weights)
    a, b = gan.generate(7, 8), gan.generate(7, 8)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, gan.generate(8, 8))
    labelled = [label_small_face(teacher, face) for face in a]
    # The teacher sees a face in most DCGAN samples (54 of 64 with seed 0 when this was written).
    assert sum(f is not None for f in labelled) >= 5


def _raw_space_backbone(centerface_onnx):
    cfg = get_config("demo").backbone
    body = build_backbone(cfg)
    state = centerface_state_dict(centerface_onnx, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    # The demo backbone has no features.18; stage modules are views of the torchvision body.
    stages = body.stages
    flat = torch.nn.Sequential(*[m for stage in stages for m in stage])
    missing, unexpected = flat.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return body.eval()


def test_centerface_transplant_matches_the_onnx_graph(centerface_onnx):
    """Our ReLU MobileNetV2 with the transplanted weights reproduces CenterFace's own tensors (ONNX
    Runtime on the shipped graph) at C2..C5 when fed the same raw 0..255 input."""
    import onnx
    import onnxruntime as ort

    body = _raw_space_backbone(centerface_onnx)
    raw = np.random.default_rng(0).uniform(0, 255, (1, 3, 96, 128)).astype(np.float32)
    with torch.no_grad():
        ours = [t.numpy() for t in body(torch.from_numpy(raw))]
    model = onnx.load_from_string(dynamic_shape_model(centerface_onnx))
    names = [o for n in model.graph.node for o in n.output]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    theirs = ort.InferenceSession(model.SerializeToString(), opts).run(names, {"input.1": raw})
    assert [o.shape[1] for o in ours] == [24, 32, 96, 320]
    for o in ours:
        best = min(np.abs(t - o).max() / np.abs(t).max() for t in theirs if t.shape == o.shape)
        assert best < 1e-5


def test_centerface_first_conv_absorbs_the_normalisation(centerface_onnx):
    ic = InputConfig()
    raw_state = centerface_state_dict(centerface_onnx, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    norm_state = centerface_state_dict(centerface_onnx, ic.pixel_mean, ic.pixel_std)
    w_raw, b_raw = raw_state["features.0.0.weight"], raw_state["features.0.1.bias"]
    w, b = norm_state["features.0.0.weight"], norm_state["features.0.1.bias"]
    raw = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(1)) * 255
    mean, std = torch.tensor(ic.pixel_mean).view(1, 3, 1, 1), torch.tensor(ic.pixel_std).view(1, 3, 1, 1)
    # No padding: every output reads real pixels, where folding is exact.
    expected = torch.nn.functional.conv2d(raw, w_raw, b_raw, stride=2)
    got = torch.nn.functional.conv2d((raw - mean) / std, w, b, stride=2)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_pasted_face_labels_follow_the_affine_map():
    """A bright disk with known 'landmarks' pasted by face_matrix lands where the matrix says."""
    patch = np.zeros((64, 64, 3), np.uint8)
    cv2.circle(patch, (40, 20), 3, (255, 255, 255), -1)  # a marker at (40.5, 20.5) in continuous pixels
    face = FacePatch(patch, np.array([8.0, 8.0, 56.0, 56.0], np.float32), np.zeros((5, 2), np.float32))
    canvas = np.zeros((300, 400, 3), np.uint8)
    m = face_matrix(face, 96.0, 200.0, 150.0, 0.0)
    # Hand computation: scale 96/48 = 2 about the box centre (32, 32) moved to (200, 150).
    expected = translation(200, 150) @ scaling(2.0) @ translation(-32, -32)
    assert np.allclose(m, expected)
    paste_face(canvas, face, m, np.ones((64, 64), np.float32))
    ys, xs = np.nonzero(canvas[..., 0] > 128)
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    assert np.abs(centre - np.array([200 + 2 * (40.5 - 32), 150 + 2 * (20.5 - 32)])).max() < 0.75


def test_rotated_paste_rotates_about_the_face_centre():
    face = FacePatch(np.zeros((10, 10, 3), np.uint8), np.array([0.0, 0.0, 10.0, 10.0], np.float32),
                     np.zeros((5, 2), np.float32))
    m = face_matrix(face, 20.0, 50.0, 60.0, 90.0)
    # The centre stays put; the point right of the centre (x + 5 px in the patch) goes up by 10 px.
    assert np.allclose(m @ [5.0, 5.0, 1.0], [50.0, 60.0, 1.0])
    assert np.allclose(m @ [10.0, 5.0, 1.0], [50.0, 50.0, 1.0], atol=1e-9)
    assert np.allclose(rotation(90, 0, 0)[:2, :2], [[0, 1], [-1, 0]], atol=1e-12)


def test_feathered_ellipse_is_one_inside_zero_outside():
    a = feathered_ellipse(40, 60)
    assert a[20, 30] == 1.0 and a[0, 0] == 0.0 and a[20, 0] < 0.2 and a.min() >= 0 and a.max() <= 1


def test_label_photo_merges_scales_without_duplicates(teacher):
    photo = label_photo(teacher, grace_hopper(), "grace_hopper.jpg")
    assert len(photo.boxes) == 1 and photo.landmarks.shape == (1, 5, 2)
