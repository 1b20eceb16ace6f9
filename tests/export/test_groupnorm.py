"""export/groupnorm.py: the exporter's GroupNorm chains as GroupNormalization nodes, and the
batch-safe Reshape, each run in ONNX Runtime against torch.nn.GroupNorm (the independent reference)."""
import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from export.batch_safe import batch_safe_reshapes
from export.groupnorm import fuse_group_norms

GROUPS, CHANNELS = 4, 32


@pytest.fixture(scope="module")
def conv_gn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, CHANNELS, 3, padding=1), torch.nn.GroupNorm(GROUPS, CHANNELS),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():  # a different scale / shift per channel, so per-group vs per-channel matters
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    return model


def _export(model, opset: int, spatial=(10, 12)) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 8, *spatial),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def _run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_the_exporter_writes_the_five_node_chain(conv_gn):
    # What the rewrites rely on: the same chain at opsets 17, 18 and 21 (torch 2.14, dynamo=False).
    for opset in (17, 18, 21):
        ops = [o for o in _ops(_export(conv_gn, opset)) if o not in ("Constant", "Shape")]
        assert ops == ["Conv", "Reshape", "InstanceNormalization", "Reshape", "Mul", "Add", "Relu"], opset


def test_opset21_one_node_with_per_channel_affine(conv_gn):
    model = _export(conv_gn, 21)
    assert fuse_group_norms(model) == 1
    assert _ops(model) == ["Conv", "GroupNormalization", "Relu"]
    onnx.checker.check_model(model, full_check=True)
    node = model.graph.node[1]
    scale = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == node.input[1])
    assert scale.shape == (CHANNELS,)
    x = torch.randn(3, 8, 10, 12)
    with torch.no_grad():
        expected = conv_gn(x).numpy()
    assert np.abs(_run(model, x) - expected).max() <= 1e-5


def test_opset18_node_is_per_group_so_the_affine_stays(conv_gn):
    model = _export(conv_gn, 18)
    assert fuse_group_norms(model) == 1
    assert [o for o in _ops(model)] == ["Conv", "GroupNormalization", "Mul", "Add", "Relu"]
    node = model.graph.node[1]
    scale = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == node.input[1])
    assert scale.shape == (GROUPS,) and np.all(scale == 1)
    x = torch.randn(3, 8, 10, 12)
    with torch.no_grad():
        expected = conv_gn(x).numpy()
    assert np.abs(_run(model, x) - expected).max() <= 1e-5


def test_opset17_has_no_group_normalization(conv_gn):
    with pytest.raises(ValueError, match="opset >= 18"):
        fuse_group_norms(_export(conv_gn, 17))


def test_a_chain_with_a_changed_constant_is_left_alone(conv_gn):
    model = _export(conv_gn, 21)
    norm = next(n for n in model.graph.node if n.op_type == "InstanceNormalization")
    scale = next(n for n in model.graph.node if n.output[0] == norm.input[1])
    scale.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.full(GROUPS, 2.0, np.float32)))
    assert fuse_group_norms(model) == 0
    assert "InstanceNormalization" in _ops(model)


def test_batch_safe_reshape_runs_an_empty_batch(conv_gn):
    model = _export(conv_gn, 17)
    empty = torch.zeros(0, 8, 10, 12)
    with pytest.raises(Exception, match="cannot be reshaped"):  # Reshape(x, [0, G, -1]) cannot infer -1 at N = 0
        _run(model, empty)
    assert batch_safe_reshapes(model) == 2  # into and out of [N, G, C / G * H * W]
    onnx.checker.check_model(model, full_check=True)
    assert _run(model, empty).shape == (0, CHANNELS, 10, 12)
    x = torch.randn(3, 8, 10, 12)
    with torch.no_grad():
        expected = conv_gn(x).numpy()
    assert np.abs(_run(model, x) - expected).max() <= 1e-5


def test_batch_safe_reshape_needs_static_channels_and_space(conv_gn):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv_gn, (torch.randn(2, 8, 10, 12),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    assert batch_safe_reshapes(onnx.load_from_string(buffer.getvalue())) == 0


def test_export_detector_option_writes_one_node_per_group_norm(tmp_path):
    import onnxruntime as ort

    from export.export_onnx import export_detector
    from maskface import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with pytest.raises(ValueError, match="opset >= 21"):
        export_detector(model, tmp_path / "bad.onnx", opset=18, group_norm_nodes=True)
    path = export_detector(model, tmp_path / "nodes.onnx", opset=21, group_norm_nodes=True)
    ops = _ops(onnx.load(str(path)))
    group_norms = sum(isinstance(m, torch.nn.GroupNorm) for name, m in model.named_modules()
                      if not name.startswith("keypoint_head"))  # the detector's
    assert "InstanceNormalization" not in ops and ops.count("GroupNormalization") == group_norms > 0
    images = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    scores, _, *features = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": images.numpy()})
    with torch.no_grad():
        t_scores, _, t_features = model.detect_candidates(images)
    # An untrained model's near-tied scores may swap top-k ranks (and so boxes); values must agree.
    assert np.abs(np.sort(scores, axis=1) - np.sort(t_scores.numpy(), axis=1)).max() <= 1e-5
    for a, b in zip(features, t_features):
        assert np.abs(a - b.numpy()).max() <= 1e-4


def test_unnamed_chains_become_nodes_of_their_own_names():
    # two GroupNorms whose nodes carry no names: their GroupNormalization nodes and constants must not collide
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.GroupNorm(2, 16)).eval()
    model = _export(net, 21)
    for node in model.graph.node:
        node.name = ""
    assert fuse_group_norms(model) == 2
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(3, 8, 10, 12)
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(_run(model, x) - expected).max() <= 1e-5
