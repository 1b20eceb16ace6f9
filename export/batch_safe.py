"""Make the exporter's batch-copying Reshapes run on an empty batch (the keypoint graph at N = 0).

torch.onnx writes GroupNorm's reshape as Reshape(x, [0, G, -1]) (0 copies the batch dim, -1 takes
the rest), and ONNX Runtime's ReshapeFusion turns decode_heatmaps' computed target [n, K, h * w] into
the same [0, K, -1] form. Neither can infer -1 when the batch is empty (0 elements / (0 * K)), which
is why the keypoint graph used to pad one ROI. When the non-batch dims of input and output are static,
the constant target [-1, K, h * w] is the same reshape, and -1 (the batch) is inferable from 0
elements: 0 / (K * h * w) = 0.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from maskface.runtimes.group_norm_graph import remove_dead_nodes


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    # data_prop follows the keypoint graph's pooled shape through ConstantOfShape / ScatterND.
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def batch_safe_reshapes(model: onnx.ModelProto) -> int:
    """Give each Reshape whose input and output have static non-batch dims (and equal sizes per sample,
    so the batch carries over) the constant target [-1, *output dims 1..]; returns how many were
    rewritten (the graph is changed in place; the old shape subgraphs are removed when unused)."""
    graph = model.graph
    shapes = _static_shapes(model)
    changed = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        source, result = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not source or not result or len(source) < 2 or len(result) < 2:
            continue
        if any(d is None for d in source[1:] + result[1:]) or np.prod(source[1:]) != np.prod(result[1:]):
            continue
        if source[0] is not None and result[0] is not None:
            continue  # fully static: the batch is not an issue
        name = f"{node.name or node.output[0]}/batch_safe_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, *result[1:]], np.int64), name))
        node.input[1] = name
        changed += 1
    if changed:
        remove_dead_nodes(model)
    return changed
