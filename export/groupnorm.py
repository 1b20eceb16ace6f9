"""Rewrite the TorchScript exporter's GroupNorm chains into ONNX GroupNormalization nodes (issue 15).

torch.onnx (dynamo=False) exports nn.GroupNorm at every opset as five nodes:

    Reshape(x, [0, G, -1]) -> InstanceNormalization(scale=1, bias=0) -> Reshape(., Shape(x))
    -> Mul(., weight[C, 1, 1]) -> Add(., bias[C, 1, 1])

fuse_group_norms() replaces each such chain by GroupNormalization, whose affine parameters depend on
the graph's opset:

* opset >= 21: scale / bias are per CHANNEL, so the whole chain becomes one node;
* opset 18..20: scale / bias are per GROUP (the reason opset 21 replaced the op), which cannot hold
  nn.GroupNorm's per-channel affine; the node gets unit scale / zero bias and the Mul / Add stay.

Only chains whose constants match exactly are rewritten, so the rewrite is exact (the same mean /
variance / epsilon); anything else is left alone.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_OPSET = 18  # GroupNormalization first appears in opset 18
PER_CHANNEL_OPSET = 21  # from here its scale / bias have one value per channel


def default_opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            # the exporter shares equal initializers (e.g. an untrained model's GroupNorm ones / zeros)
            values[node.output[0]] = values[node.input[0]]
    return values


def _match_chain(reshape_in, producers, consumers, constants, graph_outputs):
    """The five nodes and (groups, epsilon, weight [C], bias [C]) of one exporter chain, or None."""
    def only_consumer(tensor, op_type):
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type or tensor in graph_outputs:
            return None
        return users[0]

    target = constants.get(reshape_in.input[1])
    if target is None or target.shape != (3,) or target[0] != 0 or target[2] != -1:
        return None
    groups = int(target[1])
    norm = only_consumer(reshape_in.output[0], "InstanceNormalization")
    if norm is None:
        return None
    scale, shift = constants.get(norm.input[1]), constants.get(norm.input[2])
    if scale is None or shift is None or scale.shape != (groups,) or not (np.all(scale == 1) and np.all(shift == 0)):
        return None
    reshape_out = only_consumer(norm.output[0], "Reshape")
    if reshape_out is None:
        return None
    shape_node = producers.get(reshape_out.input[1])
    if (shape_node is None or shape_node.op_type != "Shape" or shape_node.input[0] != reshape_in.input[0]
            or shape_node.attribute):
        return None
    mul = only_consumer(reshape_out.output[0], "Mul")
    if mul is None:
        return None
    add = only_consumer(mul.output[0], "Add")
    if add is None:
        return None
    weight = _other_constant(mul, reshape_out.output[0], constants)
    bias = _other_constant(add, mul.output[0], constants)
    if weight is None or bias is None or weight.ndim != 3 or weight.shape[1:] != (1, 1) or bias.shape != weight.shape:
        return None
    if weight.shape[0] % groups:
        return None
    epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    return (reshape_in, norm, reshape_out, mul, add), (groups, epsilon, weight.reshape(-1), bias.reshape(-1))


def _other_constant(node, data_input, constants):
    others = [i for i in node.input if i != data_input]
    return constants.get(others[0]) if len(others) == 1 else None


def fuse_group_norms(model: onnx.ModelProto) -> int:
    """Rewrite every exporter GroupNorm chain of `model` in place; returns how many were rewritten."""
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"GroupNormalization needs opset >= {MIN_OPSET}; the graph has opset {opset}")
    per_channel = opset >= PER_CHANNEL_OPSET
    graph = model.graph
    constants = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}

    replacements: dict[int, onnx.NodeProto] = {}  # id(first node of a chain) -> the new node
    removed: set[int] = set()
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        match = _match_chain(node, producers, consumers, constants, graph_outputs)
        if match is None:
            continue
        chain, (groups, epsilon, weight, bias) = match
        reshape_in, norm, reshape_out, mul, add = chain
        prefix = norm.name.rsplit("/", 1)[0] if "/" in norm.name else norm.name
        if per_channel:
            scale, shift, output, swallowed = weight, bias, add.output[0], chain
        else:  # per-group affine cannot express nn.GroupNorm's per-channel one: keep the Mul / Add
            scale, shift = np.ones(groups, weight.dtype), np.zeros(groups, bias.dtype)
            output, swallowed = reshape_out.output[0], chain[:3]
        scale_name, shift_name = f"{prefix}/GroupNormalization_scale", f"{prefix}/GroupNormalization_bias"
        graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), scale_name),
                                  numpy_helper.from_array(shift.astype(np.float32), shift_name)])
        replacements[id(reshape_in)] = helper.make_node(
            "GroupNormalization", [reshape_in.input[0], scale_name, shift_name], [output],
            name=f"{prefix}/GroupNormalization", epsilon=float(epsilon), num_groups=groups)
        removed.update(id(n) for n in swallowed)

    if not replacements:
        return 0
    kept = []
    for node in graph.node:
        if id(node) in replacements:
            kept.append(replacements[id(node)])
        elif id(node) not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    remove_dead_nodes(model)
    return len(replacements)


def remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs is used (the chains' Shape / Constant nodes), unused
    initializers and the value_info of tensors that no longer exist."""
    graph = model.graph
    while True:
        used = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        alive = [n for n in graph.node if any(o in used for o in n.output if o)]
        del graph.node[:]
        graph.node.extend(alive)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    existing = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    infos = [v for v in graph.value_info if v.name in existing]
    del graph.value_info[:]
    graph.value_info.extend(infos)

