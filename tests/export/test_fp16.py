"""export/fp16.py: the FP16 ONNX graphs of strongly typed TensorRT builds.

Structure: checker + strict shape inference, FP32 graph inputs/outputs, FP16 backbone / FPN / context /
keypoint conv tower, FP32 for everything numerically sensitive. Numerics in ONNX Runtime (CPU):
ORT's x86 CPU provider has no FP16 kernels for Conv & co. (it casts them back to FP32 and removes
back-to-back casts), so a plain run measures the FP16 rounding of the weights; the storage emulation
(emulate_fp16_storage) also rounds every FP16 activation, as a GPU stores them.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.fp16 import (
    FLOAT16,
    Fp16Policy,
    check_fp16_model,
    convert_file,
    convert_to_fp16,
    emulate_fp16_storage,
    fp16_path,
)
from maskface.contracts import POOLED_NAME
from export.parity import clear_peaks
from tests.export.conftest_trt import exported_graphs

FP16_SCOPES = ("/backbone/", "/fpn/", "/context.", "/keypoint_head/")
# Two heatmap logits closer than this may swap order under FP16 rounding.
FP16_PEAK_MARGIN = 0.01
SENSITIVE_OPS = {"Sigmoid", "TopK", "Exp", "Softmax", "ArgMax", "GatherElements", "RoiAlign", "MultiLevelRoIAlign", "Div"}


@pytest.fixture(scope="session")
def graphs(tmp_path_factory, export_model):
    return exported_graphs(tmp_path_factory, export_model)


@pytest.fixture(scope="session")
def fp16_graphs(graphs):
    out = {}
    for name in ("detector", "keypoint_head", "keypoint_head_portable"):
        model = onnx.load(str(graphs[name]))
        converted, report = convert_to_fp16(model)
        out[name] = (model, converted, report)
    return out


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def _session(model: onnx.ModelProto, emulate: bool = False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if emulate:  # keep the Identity nodes that store activations in FP16
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        model = emulate_fp16_storage(model)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", ["detector", "keypoint_head", "keypoint_head_portable"])
def test_fp16_graph_is_valid_and_keeps_fp32_io(fp16_graphs, name):
    model, converted, report = fp16_graphs[name]
    check_fp16_model(converted)  # checker + shape inference (strict without the custom node)
    assert [(i.name, i.type.tensor_type.elem_type) for i in converted.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in converted.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    assert report.fp16_nodes > 0 and report.casts_to_fp16 > 0 and report.casts_to_fp32 > 0
    assert not report.kept_out_of_range
    print(f"\n{name}: {report.fp16_nodes} FP16 nodes, {report.casts_to_fp16} casts to FP16, "
          f"{report.casts_to_fp32} to FP32, {report.converted_constants} constants, "
          f"{report.kept_for_norm} GroupNorm nodes kept FP32")


def test_detector_fp16_region_and_fp32_sensitive_parts(fp16_graphs):
    _, converted, _ = fp16_graphs["detector"]
    types = _types(converted)
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    for node in convs:
        in_region = node.name.startswith(FP16_SCOPES)
        expected = FLOAT16 if in_region else TensorProto.FLOAT
        assert types[node.input[0]] == expected and types[node.input[1]] == expected, node.name
        assert types[node.output[0]] == expected, node.name
    assert any(n.name.startswith("/detection_head/") for n in convs)  # the heads read FP32 M2..M6
    for node in converted.graph.node:
        if node.op_type in SENSITIVE_OPS or node.op_type == "InstanceNormalization":
            floats = [types.get(i) for i in node.input if i and types.get(i) in (TensorProto.FLOAT, FLOAT16)]
            assert floats and all(t == TensorProto.FLOAT for t in floats), (node.name, node.op_type)


def test_groupnorm_can_be_fp16_on_request(graphs):
    model = onnx.load(str(graphs["detector"]))
    converted, report = convert_to_fp16(model, Fp16Policy(norm_fp16=True))
    check_fp16_model(converted)
    types = _types(converted)
    norms = [n for n in converted.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(types[n.input[0]] == FLOAT16 for n in norms)
    assert report.kept_for_norm == 0 and report.casts_to_fp16 == 1  # only the image enters the region


def test_keypoint_graphs_pool_in_fp32_and_share_the_fp16_tower(fp16_graphs):
    _, custom, _ = fp16_graphs["keypoint_head"]
    _, portable, _ = fp16_graphs["keypoint_head_portable"]
    node = next(n for n in custom.graph.node if n.op_type == "MultiLevelRoIAlign")
    # The plugin reads the FP32 graph inputs (maps and rois) and its pooled output is cast to FP16.
    assert list(node.input[:5]) == ["m2", "m3", "m4", "m5", "m6"]
    assert _types(custom)[node.input[5]] == TensorProto.FLOAT  # the rois (+ the graph's padding ROI)
    producers = {o: n for n in custom.graph.node for o in n.output}
    assert producers[node.input[5]].op_type == "Concat"
    for graph in (custom, portable):
        cast = next(n for n in graph.graph.node if n.op_type == "Cast" and list(n.input) == [POOLED_NAME])
        assert cast.attribute[0].i == FLOAT16
        for n in graph.graph.node:
            if n.op_type in ("RoiAlign", "Softmax", "ArgMax"):
                assert _types(graph)[n.input[0]] == TensorProto.FLOAT, n.name

    def tower(graph):
        inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
        nodes = [n for n in graph.graph.node if n.name.startswith("/keypoint_head/")]
        return [(n.name, n.op_type, [inits[i].tobytes() if i in inits else None for i in n.input]) for n in nodes]

    assert tower(custom) == tower(portable)


def test_out_of_range_weights_stay_fp32_and_nodes_outside_the_scopes_are_untouched(tmp_path):
    """A conv whose weights exceed FP16's range stays FP32; ops outside the scopes are untouched."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])
    ok = numpy_helper.from_array(np.full((2, 2, 1, 1), 0.5, np.float32), "w_ok")
    big = numpy_helper.from_array(np.full((2, 2, 1, 1), 1e6, np.float32), "w_big")
    nodes = [
        helper.make_node("Conv", ["x", "w_ok"], ["a"], name="/backbone/c1/Conv"),
        helper.make_node("Relu", ["a"], ["b"], name="/backbone/r/Relu"),
        helper.make_node("Conv", ["b", "w_big"], ["y"], name="/backbone/c2/Conv"),
        helper.make_node("Sigmoid", ["b"], ["z"], name="/Sigmoid"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], [ok, big]),
                              opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "small.onnx"
    onnx.save(model, str(src))
    report = convert_file(src, fp16_path(src))
    assert fp16_path(src).name == "small.fp16.onnx" and fp16_path(src).is_file()
    assert report.kept_out_of_range == ["/backbone/c2/Conv"] and report.fp16_nodes == 2
    converted = onnx.load(str(fp16_path(src)))
    types = _types(converted)
    by_name = {n.name: n for n in converted.graph.node}
    assert types[by_name["/backbone/c1/Conv"].input[1]] == FLOAT16
    assert types[by_name["/backbone/c2/Conv"].input[1]] == TensorProto.FLOAT
    assert types[by_name["/Sigmoid"].input[0]] == TensorProto.FLOAT
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    ref = _session(model).run(None, feeds)
    out = _session(converted, emulate=True).run(None, feeds)
    for a, b in zip(ref, out):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=1e-3 * np.abs(a).max())


# --------------------------------------------------------------------------------------------- numerics


def _nearest_box_rel_error(ref_boxes: np.ndarray, boxes: np.ndarray) -> float:
    """Max over `boxes` of the L-inf distance to the nearest reference box, relative to its size."""
    worst = 0.0
    ref = ref_boxes.astype(np.float64)
    size = np.maximum(ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]).clip(min=1.0)
    for start in range(0, len(boxes), 256):
        chunk = boxes[start:start + 256].astype(np.float64)
        dist = np.abs(chunk[:, None, :] - ref[None]).max(axis=2)
        j = dist.argmin(axis=1)
        worst = max(worst, float((dist[np.arange(len(j)), j] / size[j]).max()))
    return worst


def test_fp16_detector_matches_fp32_in_onnxruntime(fp16_graphs):
    model, converted, _ = fp16_graphs["detector"]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 3, 192, 256)).astype(np.float32)
    ref = _session(model).run(None, {"images": images})
    names = [o.name for o in model.graph.output]
    results = {}
    for mode in ("weights", "storage"):
        out = _session(converted, emulate=mode == "storage").run(None, {"images": images})
        feats = {n: (float(np.abs(a - b).max()), float(np.abs(a - b).mean()), float(np.abs(a).mean()))
                 for n, a, b in zip(names[2:], ref[2:], out[2:])}
        score_err = float(np.abs(np.sort(ref[0][0]) - np.sort(out[0][0])).max())
        top = np.argsort(-out[0][0])[:1000]
        box_rel = _nearest_box_rel_error(ref[1][0], out[1][0][top])
        results[mode] = (feats, score_err, box_rel)
        print(f"\nFP16 detector vs FP32 ({mode} rounding): sorted scores max {score_err:.3g} "
              f"(scores up to {ref[0].max():.3g}); top-1000 boxes max rel err {box_rel:.3g}")
        for n, (mx, mean, ref_mean) in feats.items():
            print(f"  {n}: max {mx:.3g} mean {mean:.3g} (mean |ref| {ref_mean:.3g})")
        for n, (mx, mean, ref_mean) in feats.items():
            assert mean < 0.1 * ref_mean, (mode, n)
            assert mx < 1.0, (mode, n)
        assert score_err < 1e-3 and box_rel < 0.05
    # Storing activations in FP16 costs little next to the weights' own rounding (this random
    # network's sensitivity; the same error appears with FP32 weights jittered by 2^-11).
    for n in names[2:]:
        assert results["storage"][0][n][1] < 2.0 * results["weights"][0][n][1] + 1e-3, n


def test_fp16_portable_keypoint_head_matches_fp32_in_onnxruntime(graphs, fp16_graphs):
    model, converted, _ = fp16_graphs["keypoint_head_portable"]
    rng = np.random.default_rng(1)
    feeds = {f"m{k}": np.maximum(rng.standard_normal((1, 256, 256 >> k, 320 >> k)), 0).astype(np.float32)
             for k in range(2, 7)}
    xy = rng.uniform(0, 200, (6, 2))
    wh = rng.uniform(8, 300, (6, 2))
    rois = np.concatenate([np.zeros((6, 1)), xy, np.minimum(xy + wh, [320, 256])], 1).astype(np.float32)
    size = np.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))[:, None]
    # Random maps give heatmaps whose two best logits can be closer than FP16 rounding: the argmax
    # may then pick the other cell. Landmark errors are measured where the peak is clear.
    with torch.no_grad():
        features = [torch.from_numpy(feeds[f"m{k}"]) for k in range(2, 7)]
        heatmaps = graphs["model"].landmarks(features, torch.from_numpy(rois))[2]
    clear = clear_peaks(heatmaps, margin=FP16_PEAK_MARGIN)
    sessions = {"fp32": _session(model), "weights": _session(converted), "storage": _session(converted, emulate=True)}
    for num in (0, 6):
        feeds["rois"] = rois[:num]
        ref = sessions["fp32"].run(None, feeds)
        for mode in ("weights", "storage"):
            out = sessions[mode].run(None, feeds)
            assert [o.shape for o in out] == [r.shape for r in ref] and out[0].dtype == np.float32
            if num == 0:
                continue
            err = np.abs(out[0] - ref[0]).max(axis=2)[clear[:num]]
            nme = (np.abs(out[0] - ref[0]).max(axis=2) / size[:num])[clear[:num]]
            print(f"\nFP16 keypoint head, {num} ROIs ({mode} rounding), {err.size} of {clear[:num].size} points with a "
                  f"clear peak: landmarks max {err.max():.3g} px, median {np.median(err):.3g} px, max NME {nme.max():.3g}; "
                  f"scores max {np.abs(out[1] - ref[1]).max():.3g}")
            assert err.size >= 0.5 * clear[:num].size
            assert np.median(err) < 0.01 and err.max() < 0.5 and nme.max() < 5e-3
            np.testing.assert_allclose(out[1], ref[1], atol=1e-5)
