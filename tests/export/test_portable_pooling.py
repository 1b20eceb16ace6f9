"""The portable keypoint graph pools each ROI once, on its own level (issue 15), and runs N = 0.

Reference: the level of each ROI computed here by hand (Eq. 6 in numpy) and torchvision.ops.roi_align
on that one level; the graph under test is the exported keypoint_head_portable.onnx in ONNX Runtime."""
import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import roi_align

from export.export_onnx import export_keypoint_head
from maskface import build_model
from maskface.contracts import KEYPOINT_INPUTS, POOLED_NAME

HEIGHT, WIDTH = 512, 768
STRIDES = (4, 8, 16, 32, 64)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def session(tiny, tmp_path_factory):
    import onnxruntime as ort

    path = export_keypoint_head(tiny, tmp_path_factory.mktemp("kp") / "keypoint_head_portable.onnx", portable=True)
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(POOLED_NAME, onnx.TensorProto.FLOAT, None))
    return model, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _features(channels: int):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((2, channels, HEIGHT // s, WIDTH // s)).astype(np.float32) for s in STRIDES]


def _level(roi) -> int:
    """Eq. 6 by hand: floor(3 + log2(sqrt(w h) / 224)), clamped to 2..6."""
    side = np.sqrt((roi[3] - roi[1]) * (roi[4] - roi[2]))
    return int(min(max(np.floor(3 + np.log2(side / 224.0)), 2), 6))


def _rois(n: int) -> np.ndarray:
    """n ROIs with log-uniform sizes 16..2500 px (every level for n >= 20), both images of the batch,
    none within 1e-3 of a level boundary (float rounding could flip those)."""
    rng = np.random.default_rng(n)
    rois = []
    while len(rois) < n:
        side = np.exp(rng.uniform(np.log(16), np.log(2500)))
        if abs((3 + np.log2(side / 224.0)) % 1 - 0.5) > 0.499:
            continue
        aspect = rng.uniform(0.6, 1.6)
        w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        rois.append([float(rng.integers(0, 2)), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(rois, np.float32).reshape(n, 5)


def _reference(features, rois, size: int, sampling_ratio: int) -> np.ndarray:
    out = np.zeros((len(rois), features[0].shape[1], size, size), np.float32)
    for i, roi in enumerate(rois):
        level = _level(roi)
        out[i] = roi_align(torch.from_numpy(features[level - 2]), torch.from_numpy(roi[None]), (size, size),
                           spatial_scale=1.0 / STRIDES[level - 2], sampling_ratio=sampling_ratio, aligned=True)[0].numpy()
    return out


@pytest.mark.parametrize("num_rois", [0, 1, 40])
def test_each_roi_is_pooled_on_its_own_level(tiny, session, num_rois):
    _, sess = session
    cfg = tiny.cfg.keypoints
    features = _features(tiny.cfg.fpn.channels)
    rois = _rois(num_rois)
    if num_rois >= 20:
        assert {_level(r) for r in rois} == {2, 3, 4, 5, 6}
    landmarks, scores, pooled = sess.run(["landmarks", "landmark_scores", POOLED_NAME],
                                         {**dict(zip(KEYPOINT_INPUTS, features)), "rois": rois})
    assert pooled.shape == (num_rois, tiny.cfg.fpn.channels, cfg.roi_size, cfg.roi_size)
    assert landmarks.shape == (num_rois, cfg.num_landmarks, 2) and scores.shape == (num_rois, cfg.num_landmarks)
    expected = _reference(features, rois, cfg.roi_size, cfg.sampling_ratio)
    if num_rois:
        assert np.abs(pooled - expected).max() <= 1e-5


def test_the_graph_gathers_each_levels_rois_and_pads_none(session):
    model, _ = session
    producers = {o: n for n in model.graph.node for o in n.output}
    roi_aligns = [n for n in model.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 5
    # Each RoiAlign reads only its level's ROIs: a Gather (by NonZero's indices) of the input ROIs...
    for node in roi_aligns:
        source = producers[node.input[1]]
        while source.op_type != "Gather":
            source = producers[source.input[0]]
        assert source.input[0] == "rois" or producers[source.input[0]].op_type in ("Slice", "Gather")
    # ...and no padding ROI is appended to them (the TensorRT graph keeps its one; the portable one needs none).
    assert not any(n.op_type == "Concat" and "rois" in n.input for n in model.graph.node)
