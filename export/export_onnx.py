"""Export a MaskFace model to the two ONNX graphs of docs/CONTRACTS.md.

    python export/export_onnx.py [--checkpoint PATH (default: the demo model) | --config r50] --out DIR [--portable] [--opset 17]

writes DIR/detector.onnx and DIR/keypoint_head.onnx (one `MultiLevelRoIAlign` node, for TensorRT);
with --portable the keypoint head uses standard ONNX RoiAlign nodes instead (ONNX Runtime).

We use torch.onnx's TorchScript exporter (dynamo=False): it turns shape reads into graph ops, so
H, W, B and N stay dynamic, and an autograd.Function's `symbolic` gives the custom node directly.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import onnx
import torch


from export.export_modules import (
    PLUGIN_NAMESPACE, PLUGIN_OP_VERSION, DETECTOR_INPUTS, DETECTOR_OUTPUTS, FEATURE_NAMES, HEATMAP_OUTPUT,
    KEYPOINT_INPUTS, KEYPOINT_OUTPUTS, POOLED_NAME, DetectorGraph, KeypointGraph,
)
from export.batch_safe import batch_safe_reshapes
from export.groupnorm import PER_CHANNEL_OPSET, fuse_group_norms
from maskface.modeling.maskface import MaskFace

DEFAULT_OPSET = 17
# TensorRT's TopK limit, the same in 10.16 and 11.1: "Currently only values of K up to 3840 are supported."
# (ITopKLayer::setK and INetworkDefinition::addTopK: tensorrt/10.16/include/NvInfer.h:3659 and :8458,
# tensorrt/11.1/include/NvInfer.h:3448 and :8595; tests/export/test_conformance.py re-reads it from the headers.)
TENSORRT_TOPK_MAX = 3840
DETECTOR_FILE = "detector.onnx"
KEYPOINT_FILE = "keypoint_head.onnx"
KEYPOINT_PORTABLE_FILE = "keypoint_head_portable.onnx"


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs, outputs, dynamic_axes, opset: int,
            custom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about itself and about traced shape reads; both are intended.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(tmp), dynamo=False, opset_version=opset, input_names=list(inputs),
            output_names=list(outputs), dynamic_axes=dynamic_axes, do_constant_folding=True,
            custom_opsets={PLUGIN_NAMESPACE: PLUGIN_OP_VERSION} if custom else None,
        )
    fold_static_shape_ops(tmp)
    tmp.replace(path)
    return path


def fold_static_shape_ops(path: Path) -> int:
    """Replace Shape nodes of tensors whose shape is static, and ConstantOfShape nodes of constant
    shapes, by Constant nodes (exact: their values are known at export). torch.onnx emits an INT64
    ConstantOfShape for every expand(-1, ...), and the TensorRT ONNX parser's support matrix lists
    ConstantOfShape for FP32 only (onnx-tensorrt operators.md); folded, those nodes are gone.
    Returns the number of nodes replaced."""
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(path))
    replaced = 0
    while True:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
        shapes = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input):
            dims = info.type.tensor_type.shape.dim
            if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                shapes[info.name] = [d.dim_value for d in dims]
        constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        folded = 0
        for index, node in enumerate(list(model.graph.node)):
            value = None
            if node.op_type == "Shape" and node.input[0] in shapes:
                attrs = {a.name: a.i for a in node.attribute}
                dims = shapes[node.input[0]]
                value = np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], np.int64)
            elif node.op_type == "ConstantOfShape" and node.input[0] in constants:
                fill = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
                value = np.full(constants[node.input[0]].astype(np.int64), fill.reshape(-1)[0], fill.dtype)
            if value is not None:
                model.graph.node[index].CopyFrom(helper.make_node(
                    "Constant", [], [node.output[0]], name=node.name, value=numpy_helper.from_array(value, node.output[0])))
                folded += 1
        replaced += folded
        if not folded:
            break
    if replaced:
        onnx.save(model, str(path))
    return replaced


def _feature_axes(prefix: str = "") -> dict[str, dict[int, str]]:
    return {n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in FEATURE_NAMES}


def export_detector(model: MaskFace, path: str | Path, opset: int = DEFAULT_OPSET, example_size=(256, 320),
                    group_norm_nodes: bool = False) -> Path:
    """images float32 [B, 3, H, W] (normalised, H and W multiples of 64) -> scores, boxes, m2..m6.

    group_norm_nodes=True (opset >= 21) writes each GroupNorm as one GroupNormalization node instead of
    the exporter's five-node chain. Off by default: ONNX Runtime 1.32 has no CPU kernel for it and
    expands it into a slower subgraph (docs/DEPLOYMENT.md, "Graph fixes"), and opset 21 is outside
    the TensorRT ONNX parser's documented range."""
    if group_norm_nodes and opset < PER_CHANNEL_OPSET:
        raise ValueError(f"group_norm_nodes needs opset >= {PER_CHANNEL_OPSET} (per-channel GroupNormalization); "
                         f"got {opset}")
    model = model.eval()
    images = torch.zeros(1, 3, *example_size)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch"}, "boxes": {0: "batch"},
            **_feature_axes()}
    path = _export(DetectorGraph(model), (images,), Path(path), DETECTOR_INPUTS, DETECTOR_OUTPUTS, axes, opset)
    if group_norm_nodes:
        _rewrite(path, fuse_group_norms)
    k = model.cfg.inference.pre_nms_topk
    _set_static_dims(path, {"scores": {1: k}, "boxes": {1: k}})
    validate(path, expected_inputs=DETECTOR_INPUTS, expected_outputs=DETECTOR_OUTPUTS)
    return path


def _set_static_dims(path: Path, dims: dict[str, dict[int, int]]) -> None:
    """Write known sizes (k candidates, K landmarks) into the graph outputs' declared shapes: the
    exporter leaves them symbolic, though the graph computes them from constants. Static output shapes
    are what TensorRT, Triton's configs and engines.json rely on; validate() then checks them against
    shape inference."""
    model = onnx.load(str(path))
    for out in model.graph.output:
        for axis, size in dims.get(out.name, {}).items():
            dim = out.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_value = int(size)
    onnx.save(model, str(path))


def export_keypoint_head(
    model: MaskFace, path: str | Path, portable: bool = False, heatmaps: bool = False, opset: int = DEFAULT_OPSET,
) -> Path:
    """m2..m6 + rois [N, 5] -> landmarks [N, K, 2], landmark_scores [N, K] (+ heatmaps when asked)."""
    model = model.eval()
    channels = model.cfg.fpn.channels
    features = tuple(torch.randn(1, channels, 256 // s, 320 // s) for s in model.cfg.anchors.strides)
    rois = torch.tensor([[0.0, 10.0, 20.0, 120.0, 150.0], [0.0, 30.0, 40.0, 300.0, 250.0]])
    outputs = KEYPOINT_OUTPUTS + ((HEATMAP_OUTPUT,) if heatmaps else ())
    axes = {**_feature_axes(), "rois": {0: "num_rois"}, **{o: {0: "num_rois"} for o in outputs}}
    graph = KeypointGraph(model, portable=portable, heatmaps=heatmaps)
    path = _export(graph, (*features, rois), Path(path), KEYPOINT_INPUTS, outputs, axes, opset, custom=not portable)
    _rewrite(path, batch_safe_reshapes)
    _name_pooled_tensor(path)
    k = model.cfg.keypoints.num_landmarks
    _set_static_dims(path, {"landmarks": {1: k}, "landmark_scores": {1: k}, HEATMAP_OUTPUT: {1: k}})
    validate(path, expected_inputs=KEYPOINT_INPUTS, expected_outputs=outputs)
    return path


def _rewrite(path: Path, rewrite) -> int:
    """Apply a graph rewrite (ModelProto -> number of changes) to the file at `path`."""
    model = onnx.load(str(path))
    changed = rewrite(model)
    if changed:
        onnx.save(model, str(path))
    return changed


def _name_pooled_tensor(path: Path) -> None:
    """Rename the keypoint head's input (the pooled RoI features) to POOLED_NAME in the graph."""
    model = onnx.load(str(path))
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    old = first_conv.input[0]
    for node in model.graph.node:
        node.input[:] = [POOLED_NAME if i == old else i for i in node.input]
        node.output[:] = [POOLED_NAME if o == old else o for o in node.output]
    for info in model.graph.value_info:
        if info.name == old:
            info.name = POOLED_NAME
    onnx.save(model, str(path))


def validate(path: str | Path, expected_inputs=None, expected_outputs=None) -> onnx.ModelProto:
    """onnx.checker + shape inference (strict where the graph has only standard ops)."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    has_custom = any(n.domain == PLUGIN_NAMESPACE for n in model.graph.node)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not has_custom)
    names_in = tuple(i.name for i in model.graph.input)
    names_out = tuple(o.name for o in model.graph.output)
    if expected_inputs is not None and names_in != tuple(expected_inputs):
        raise ValueError(f"{path}: inputs {names_in}, expected {tuple(expected_inputs)}")
    if expected_outputs is not None and names_out != tuple(expected_outputs):
        raise ValueError(f"{path}: outputs {names_out}, expected {tuple(expected_outputs)}")
    return inferred


def export_all(model: MaskFace, out_dir: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """detector.onnx, keypoint_head.onnx (custom node) and keypoint_head_portable.onnx."""
    out = Path(out_dir)
    return {
        "detector": export_detector(model, out / DETECTOR_FILE, opset),
        "keypoint_head": export_keypoint_head(model, out / KEYPOINT_FILE, portable=False, opset=opset),
        "keypoint_head_portable": export_keypoint_head(model, out / KEYPOINT_PORTABLE_FILE, portable=True, opset=opset),
    }


def fit_candidates_to_tensorrt(model: MaskFace, echo=print) -> int:
    """Cap the detector's in-graph top-k (cfg.inference.pre_nms_topk) at TensorRT's TopK limit, so that
    the exported graph builds; the PyTorch reference of the parity checks then uses the same k. A
    checkpoint saved with the former default 5000 gets 3840 (and the caller is told). Returns k."""
    inference = model.cfg.inference
    if inference.pre_nms_topk > TENSORRT_TOPK_MAX:
        if echo:
            echo(f"export: pre_nms_topk {inference.pre_nms_topk} exceeds TensorRT's TopK limit {TENSORRT_TOPK_MAX} "
                 f"(NvInfer.h); exporting {TENSORRT_TOPK_MAX} candidates")
        inference.pre_nms_topk = TENSORRT_TOPK_MAX
    return inference.pre_nms_topk


def load_or_init_model(checkpoint: str | None, config: str = "r50", seed: int = 0) -> tuple[MaskFace, bool]:
    """(model in eval mode, trained?) — a seeded initialisation when no checkpoint is given."""
    from maskface.checkpoint import load_model
    from maskface.modeling.maskface import build_model

    if checkpoint:
        model = load_model(checkpoint)
        fit_candidates_to_tensorrt(model)
        return model, True
    torch.manual_seed(seed)
    return build_model(config).eval(), False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="trained MaskFace checkpoint (default: the shipped demo model)")
    p.add_argument("--config", default=None, help="a seeded, untrained preset instead (r50, mbv2, ...)")
    p.add_argument("--random-init", action="store_true", help="seeded untrained weights of --config (default r50)")
    p.add_argument("--out", default="artifacts/onnx", help="output folder")
    p.add_argument("--portable", action="store_true", help="keypoint head from standard RoiAlign nodes (ONNX Runtime)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--group-norm-nodes", action="store_true",
                   help="detector GroupNorms as single GroupNormalization nodes (needs --opset 21; slower in "
                        "ONNX Runtime 1.32 CPU, see docs/DEPLOYMENT.md)")
    args = p.parse_args(argv)
    from maskface.demo.weights import default_checkpoint

    config = args.config or "r50"
    model, trained = load_or_init_model(default_checkpoint(args.checkpoint, args.config, args.random_init), config)
    if not trained:
        print(f"export: exporting a seeded initialisation of '{config}' (untrained)")
    out = Path(args.out)
    written = [export_detector(model, out / DETECTOR_FILE, args.opset, group_norm_nodes=args.group_norm_nodes)]
    name = KEYPOINT_PORTABLE_FILE if args.portable else KEYPOINT_FILE
    written.append(export_keypoint_head(model, out / name, portable=args.portable, opset=args.opset))
    for path in written:
        print(f"export: wrote {path} ({path.stat().st_size / 1e6:.1f} MB), checked and shape-inferred")
    return 0


if __name__ == "__main__":
    sys.exit(main())
