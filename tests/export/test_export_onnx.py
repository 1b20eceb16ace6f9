"""ONNX export: graph contracts, ONNX Runtime vs PyTorch parity, custom vs portable keypoint graph."""
import hashlib
import shutil

import numpy as np
import onnx
import pytest
import torch

from export.export_onnx import export_keypoint_head
from maskface.contracts import DETECTOR_OUTPUTS, KEYPOINT_INPUTS, PLUGIN_NAMESPACE, PLUGIN_OP_NAME, POOLED_NAME
from export.parity import FP32_TOLERANCE, candidate_errors, clear_peaks
from maskface.serving.onnx_graphs import OnnxGraphs, ort_session


@pytest.fixture(scope="module")
def graphs(built):
    out, code = built
    assert code == 0
    return OnnxGraphs(out / "onnx" / "detector.onnx", out / "onnx" / "keypoint_head_portable.onnx")


@pytest.fixture(scope="module")
def heatmap_graph(tmp_path_factory, export_model):
    path = tmp_path_factory.mktemp("hm") / "keypoint_head_heatmaps.onnx"
    return ort_session(export_keypoint_head(export_model, path, portable=True, heatmaps=True))


def test_graph_contracts(built):
    out, _ = built
    detector = onnx.load(str(out / "onnx" / "detector.onnx"))
    assert [i.name for i in detector.graph.input] == ["images"]
    assert tuple(o.name for o in detector.graph.output) == DETECTOR_OUTPUTS
    assert detector.opset_import[0].version >= 17
    dims = [d.dim_param or d.dim_value for d in detector.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    custom = onnx.load(str(out / "onnx" / "keypoint_head.onnx"))
    assert tuple(i.name for i in custom.graph.input) == KEYPOINT_INPUTS
    nodes = [n for n in custom.graph.node if n.domain == PLUGIN_NAMESPACE]
    assert [n.op_type for n in nodes] == [PLUGIN_OP_NAME]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_namespace"] == b"maskface" and attrs["output_size"] == 14
    assert (attrs["canonical_level"], attrs["min_level"], attrs["max_level"]) == (3, 2, 6)
    portable = onnx.load(str(out / "onnx" / "keypoint_head_portable.onnx"))
    assert not any(n.domain == PLUGIN_NAMESPACE for n in portable.graph.node)
    roi_aligns = [n for n in portable.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_aligns) == 5
    assert all(onnx.helper.get_attribute_value(a) == b"half_pixel"
               for n in roi_aligns for a in n.attribute if a.name == "coordinate_transformation_mode")


@pytest.mark.parametrize("size", [(448, 640), (320, 192)], ids=["640x448", "192x320"])
def test_detector_matches_pytorch_at_two_sizes(graphs, export_model, size):
    images = torch.from_numpy(np.random.default_rng(size[0]).standard_normal((1, 3, *size)).astype(np.float32))
    with torch.no_grad():
        t_scores, t_boxes, t_features = export_model.detect_candidates(images)
    scores, boxes, features = graphs.detect(images.numpy())
    assert scores.shape == (1, 3840) and boxes.shape == (1, 3840, 4)
    score_err, box_err = candidate_errors(t_scores[0].numpy(), t_boxes[0].numpy(), scores[0], boxes[0])
    print(f"\ndetector {size}: scores {score_err:.2e}, boxes {box_err:.2e} px, features "
          f"{max(np.abs(f - t.numpy()).max() for f, t in zip(features, t_features)):.2e}")
    assert score_err <= 1e-4 and box_err <= FP32_TOLERANCE["boxes"]
    for f, t in zip(features, t_features):
        assert f.shape == tuple(t.shape)
        assert np.abs(f - t.numpy()).max() <= 1e-4


def random_rois(n: int, seed: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = torch.rand(n, 2, generator=g) * 400 + 4
    return torch.cat([torch.zeros(n, 1), xy, xy + wh], dim=1)


@pytest.fixture(scope="module")
def context_features(export_model):
    """M2..M6 of one seeded image per size, computed once."""
    cache = {}

    def get(size):
        if size not in cache:
            images = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32))
            with torch.no_grad():
                cache[size] = export_model.context_features(images)
        return cache[size]

    return get


@pytest.mark.parametrize("num_rois", [0, 1, 37])
@pytest.mark.parametrize("size", [(448, 640), (320, 192)], ids=["640x448", "192x320"])
def test_keypoint_head_heatmaps_and_landmarks_match_pytorch(heatmap_graph, export_model, context_features, num_rois, size):
    features = context_features(size)
    with torch.no_grad():
        rois = random_rois(num_rois, num_rois, *size)
        t_points, t_scores, t_heatmaps = export_model.landmarks(features, rois)
    feeds = {n: f.numpy() for n, f in zip(KEYPOINT_INPUTS, features)}
    feeds["rois"] = rois.numpy()
    points, scores, heatmaps = heatmap_graph.run(["landmarks", "landmark_scores", "heatmaps"], feeds)
    k = export_model.num_landmarks
    assert points.shape == (num_rois, k, 2) and scores.shape == (num_rois, k)
    assert heatmaps.shape == (num_rois, k, 56, 56)
    if num_rois == 0:
        return
    assert np.abs(heatmaps - t_heatmaps.numpy()).max() <= 1e-4
    clear = clear_peaks(t_heatmaps)
    assert clear.mean() > 0.5  # most peaks are clear even untrained; the rest are float ties
    assert np.abs(points - t_points.numpy()).max(axis=2)[clear].max() <= 0.05
    assert np.abs(scores - t_scores.numpy()).max() <= 1e-5


def _signature(model: onnx.ModelProto, leaves: set[str]):
    """A structural hash of each tensor: op types, attributes and weight values of everything that
    computes it, independent of the exporter's node and tensor names."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    memo: dict[str, str] = {}

    def sig(name: str) -> str:
        if name in memo:
            return memo[name]
        if name in leaves or name in inputs:
            s = f"leaf:{name}"
        elif name == "":
            s = "none"
        elif name in inits:
            t = inits[name]
            s = f"init:{t.data_type}:{list(t.dims)}:{hashlib.sha1(onnx.numpy_helper.to_array(t).tobytes()).hexdigest()}"
        else:
            node = producers[name]
            attrs = sorted((a.name, hashlib.sha1(a.SerializeToString()).hexdigest()) for a in node.attribute)
            s = f"{node.domain}:{node.op_type}:{attrs}:{[sig(i) for i in node.input]}:{list(node.output).index(name)}"
            s = hashlib.sha1(s.encode()).hexdigest()
        memo[name] = s
        return s

    return sig


def test_custom_and_portable_graphs_differ_only_in_the_pooler(built):
    out, _ = built
    custom = onnx.load(str(out / "onnx" / "keypoint_head.onnx"))
    portable = onnx.load(str(out / "onnx" / "keypoint_head_portable.onnx"))
    sig_c = _signature(custom, {POOLED_NAME})
    sig_p = _signature(portable, {POOLED_NAME})
    # The keypoint head, from the pooled RoI features to the heatmaps (weights included), is identical...
    heatmaps = lambda m: next(n.output[0] for n in m.graph.node if n.op_type == "Resize")  # noqa: E731
    assert sig_c(heatmaps(custom)) == sig_p(heatmaps(portable))
    assert [o.name for o in custom.graph.output] == [o.name for o in portable.graph.output]
    assert [i.name for i in custom.graph.input] == [i.name for i in portable.graph.input]
    # ...the custom node reads the ROIs plus the one padding ROI that only the TensorRT graph appends
    # (KeypointGraph.forward); the portable RoiAligns read each level's ROIs gathered from the input
    # (tests/export/test_portable_pooling.py).
    node = next(n for n in custom.graph.node if n.op_type == PLUGIN_OP_NAME)
    assert list(node.input[:5]) == ["m2", "m3", "m4", "m5", "m6"] and list(node.output) == [POOLED_NAME]
    concat = next(n for n in custom.graph.node if n.output[0] == node.input[5])
    assert concat.op_type == "Concat" and concat.input[0] == "rois" and len(concat.input) == 2
    assert not any(n.op_type == "Concat" and "rois" in n.input for n in portable.graph.node)
    # The portable pooler holds no weights, so both graphs carry the same weight values.
    weights = lambda m: sorted(hashlib.sha1(onnx.numpy_helper.to_array(i).tobytes()).hexdigest()  # noqa: E731
                               for i in m.graph.initializer if len(i.dims) and np.prod(i.dims) > 16)
    assert weights(custom) == weights(portable)


def test_plugin_reference_matches_the_portable_pooler(built, tmp_path):
    """The plugin's CPU reference, run with the custom node's attributes on its inputs, equals the
    portable graph's RoiAlign output."""
    if shutil.which("nvcc") is None and not __import__("os").path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("no nvcc: the plugin's CPU reference library cannot be built here")
    from plugins.binding import multilevel_roi_align_cpu

    out, _ = built
    custom = onnx.load(str(out / "onnx" / "keypoint_head.onnx"))
    node = next(n for n in custom.graph.node if n.op_type == PLUGIN_OP_NAME)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    portable = onnx.load(str(out / "onnx" / "keypoint_head_portable.onnx"))
    portable.graph.output.append(onnx.helper.make_tensor_value_info(POOLED_NAME, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "portable_with_pooled.onnx"
    onnx.save(portable, str(path))
    rng = np.random.default_rng(5)
    features = [rng.standard_normal((2, 256, 448 // s, 640 // s)).astype(np.float32) for s in (4, 8, 16, 32, 64)]
    rois = random_rois(37, 7, 448, 640).numpy()
    rois[::2, 0] = 1.0  # both images of the batch
    feeds = dict(zip(KEYPOINT_INPUTS, features + [rois]))
    (pooled,) = ort_session(path).run([POOLED_NAME], feeds)
    reference = multilevel_roi_align_cpu(
        features, rois, output_size=attrs["output_size"], sampling_ratio=attrs["sampling_ratio"],
        canonical_level=attrs["canonical_level"], canonical_size=attrs["canonical_size"],
        min_level=attrs["min_level"], max_level=attrs["max_level"], spatial_scales=attrs["spatial_scales"],
    )
    err = np.abs(pooled - reference).max()
    print(f"\nplugin CPU reference vs portable RoiAlign: max abs error {err:.2e}")
    assert err <= 1e-5
