"""export/conformance.py: the exported graphs against TensorRT's documented rules, read from
shared/third_party (the ONNX parser's support matrix, NvInfer.h of 10.16 and 11.1, the pybind11
sources of the Python API). Expected values come from those files, quoted here with file:line."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import conformance
from export.conformance import Checker, check_graphs, missing_python_api, python_api
from export.export_onnx import TENSORRT_TOPK_MAX
from tests.export.conftest_trt import exported_graphs
from tests.export.trt_standin import TOPK_MAX_K, make_tensorrt

REPO = Path(__file__).resolve().parents[2]

try:
    ROOT = conformance.third_party_root()
except conformance.ThirdPartyMissing as exc:  # pragma: no cover - CI has ../shared beside the clone
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, export_model):
    return exported_graphs(tmp_path_factory, export_model)


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _findings(checker, tmp_path, model, name="g.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return checker.check(path)


# --------------------------------------------------------------------------------------------- the rules are read


def test_the_matrix_and_the_headers_are_parsed_not_copied(checker):
    m = checker.matrix
    assert (m.min_opset, m.max_opset) == (9, 20)  # operators.md:5 "opset 9 to opset 20"
    assert len(m.ops) > 150 and m.ops["TopK"].supported and not m.ops["Unique"].supported
    assert m.ops["RoiAlign"].types == {"FP32", "FP16"} and m.ops["Clip"].types == {"FP32", "FP16", "BF16"}
    assert m.ops["Xor"].types == {"BOOL"} and m.ops["TopK"].source.line == 204
    limits = {lim.version: lim for lim in checker.limits}
    assert set(limits) == {"10.16", "11.1"}
    assert [(lim.topk_max_k, lim.topk_source.line) for lim in limits.values()] == [(3840, 8458), (3840, 8595)]
    assert all(lim.interpolation_modes == {"NEAREST", "LINEAR", "CUBIC"} for lim in limits.values())
    # The exporter's and the stand-in's constants are the headers' number, not a copy that can drift.
    assert TENSORRT_TOPK_MAX == TOPK_MAX_K == min(lim.topk_max_k for lim in limits.values())
    plugin = checker.plugin
    assert (plugin.name, plugin.version, plugin.namespace) == ("MultiLevelRoIAlign", "1", "maskface")
    assert plugin.fields == {"output_size": "kINT32", "sampling_ratio": "kINT32", "canonical_level": "kINT32",
                             "canonical_size": "kFLOAT32", "min_level": "kINT32", "max_level": "kINT32",
                             "aligned": "kINT32", "spatial_scales": "kFLOAT32"}


# --------------------------------------------------------------------------------------------- today's graphs


def test_todays_graphs_conform(graphs):
    assert check_graphs([graphs["detector"], graphs["keypoint_head"]]) == []
    # The portable variant (ONNX Runtime's; standard RoiAlign nodes, FP32 per the matrix) conforms too.
    assert check_graphs([graphs["keypoint_head_portable"]]) == []
    assert conformance.main([str(graphs["detector"]), str(graphs["keypoint_head"])]) == 0


def test_the_fp16_graphs_tensorrt_builds_conform(graphs, tmp_path):
    from export import fp16

    paths = []
    for name in ("detector", "keypoint_head"):
        report = fp16.convert_file(graphs[name], tmp_path / f"{name}.fp16.onnx", fp16.Fp16Policy())
        assert report.fp16_nodes > 0
        paths.append(tmp_path / f"{name}.fp16.onnx")
    assert check_graphs(paths) == []


def test_a_graph_with_k_5000_fails_naming_the_node_and_the_rule(detector_k5000, capsys):
    findings = check_graphs([detector_k5000])
    assert [(f.node, f.op, f.rule) for f in findings] == [("/TopK", "TopK", "topk-k-limit")] * 2
    assert {f.source for f in findings} == {"tensorrt/10.16/include/NvInfer.h:8458",
                                            "tensorrt/11.1/include/NvInfer.h:8595"}
    assert "K = 5000 exceeds TensorRT 10.16's limit" in str(findings[0])
    with pytest.raises(conformance.ConformanceError, match=r"node '/TopK' \(TopK\): \[topk-k-limit\]"):
        conformance.require_conformance([detector_k5000])
    assert conformance.main([str(detector_k5000)]) == 1
    assert "1 graph(s), 2 finding(s)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- each rule can fail


def test_type_opset_and_constant_rules(checker, tmp_path):
    x64 = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    y64 = helper.make_tensor_value_info("y", TensorProto.INT64, [4])
    lo = helper.make_tensor("lo", TensorProto.INT64, [], [0])
    clip = _model([helper.make_node("Clip", ["x", "lo"], ["y"], name="int_clip")], [x64], [y64], [lo])
    found = _findings(checker, tmp_path, clip)
    assert [(f.node, f.rule) for f in found] == [("int_clip", "type")] and "INT64" in found[0].message
    assert found[0].source.startswith("onnx-tensorrt/operators.md:")

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    outs = [helper.make_tensor_value_info("v", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i", TensorProto.INT64, None)]
    dynamic_k = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")], [x, k], outs)
    assert {f.rule for f in _findings(checker, tmp_path, dynamic_k)} == {"topk-k-constant"}

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    old = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [y], opset=21)
    assert [f.rule for f in _findings(checker, tmp_path, old)] == ["opset-range"]
    unsupported = _model([helper.make_node("Unique", ["x"], ["y"], name="u")], [x], [y])
    assert [f.rule for f in _findings(checker, tmp_path, unsupported)] == ["op-supported"]
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    squeeze = _model([helper.make_node("Squeeze", ["x", "axes"], ["y"], name="sq")], [x, axes], [y])
    assert [f.rule for f in _findings(checker, tmp_path, squeeze)] == ["constant-input"]


def test_resize_pooling_and_normalization_rules(checker, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    cubic = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="cubic")], [x], [y], [scales])
    assert [f.rule for f in _findings(checker, tmp_path, cubic)] == ["resize-mode"]
    anti = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="linear", antialias=1)],
                  [x], [y], [scales], opset=18)
    assert [f.rule for f in _findings(checker, tmp_path, anti)] == ["resize-antialias"]
    dilated = _model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], dilations=[2, 2])],
                     [x], [y])
    assert [f.rule for f in _findings(checker, tmp_path, dilated)] == ["dilations"]
    gamma = helper.make_tensor("g", TensorProto.FLOAT, [6], np.ones(6))
    beta = helper.make_tensor("b", TensorProto.FLOAT, [6], np.zeros(6))
    groups = _model([helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], name="gn", num_groups=4)],
                    [x], [y], [gamma, beta], opset=18)
    found = _findings(checker, tmp_path, groups)
    assert {f.rule for f in found} == {"norm-groups"} and "4 groups do not evenly divide 6 channels" in found[0].message
    assert found[0].source.endswith("NvInfer.h:6480") or "NvInfer.h" in found[0].source


def test_plugin_node_rules(checker, graphs, tmp_path):
    model = onnx.load(str(graphs["keypoint_head"]))
    node = next(n for n in model.graph.node if n.op_type == "MultiLevelRoIAlign")
    for attr in node.attribute:
        if attr.name == "plugin_version":
            attr.s = b"2"
        if attr.name == "canonical_size":  # a float field written as an int
            attr.CopyFrom(helper.make_attribute("canonical_size", 224))
    node.attribute.append(helper.make_attribute("pooling_mode", "max"))
    rules = sorted(f.rule for f in _findings(checker, tmp_path, model, "kp.onnx"))
    assert rules == ["plugin-field", "plugin-field-type", "plugin-plugin_version"]


# --------------------------------------------------------------------------------------------- Python API


def _static_trt_uses(paths) -> set[tuple[str, str]]:
    """(class, attr) of every `trt.X` / `trt.X.Y` in the code ("" = the module): enums, classes, functions."""
    uses = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
                uses.add(("", node.attr))
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt"):
                uses.add((node.value.attr, node.attr))
    return uses


def test_module_level_tensorrt_names_exist_in_both_versions():
    files = sorted((REPO / "export").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    uses = _static_trt_uses(files)
    assert ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") in uses and ("", "Builder") in uses
    for version in ("10.16", "11.1"):
        assert missing_python_api(uses, version) == [], version
    # The flags precision_plan clears are looked up with getattr: they exist too.
    for version in ("10.16", "11.1"):
        assert {"TF32"} <= python_api(version)["BuilderFlag"]


def test_the_api_check_can_fail():
    uses = [("BuilderFlag", "FP16"), ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"), ("ILayer", "precision"),
            ("IBuilderConfig", "set_flag"), ("NoSuchClass", "x")]
    assert missing_python_api(uses, "10.16") == ["tensorrt 10.16: no class 'NoSuchClass' (for .x)"]
    assert missing_python_api(uses, "11.1") == [
        "tensorrt 11.1: BuilderFlag has no attribute 'FP16'",
        "tensorrt 11.1: BuilderFlag has no attribute 'OBEY_PRECISION_CONSTRAINTS'",
        "tensorrt 11.1: ILayer has no attribute 'precision'",
        "tensorrt 11.1: no class 'NoSuchClass' (for .x)",
    ]


@pytest.mark.parametrize("version,folder", [("10.16.0.0", "10.16"), ("11.1.0.0", "11.1")])
def test_the_standin_only_offers_what_the_bindings_have(version, folder):
    """The stand-in's enums are a subset of the real ones, so code that passes against it uses no
    name TensorRT lacks."""
    trt = make_tensorrt(version)
    api = python_api(folder)
    for enum_name in ("DataType", "MemoryPoolType", "TensorIOMode", "NetworkDefinitionCreationFlag", "BuilderFlag",
                      "LayerType"):
        members = set(getattr(trt, enum_name).__members__)
        assert members <= api[enum_name], (enum_name, sorted(members - api[enum_name]))
