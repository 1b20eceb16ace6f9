"""Rewrite the TorchScript exporter's GroupNorm chains (maskface.runtimes.group_norm_graph finds them) into
ONNX GroupNormalization nodes (issue 15).

fuse_group_norms() replaces each chain by GroupNormalization, whose affine parameters depend on
the graph's opset:

* opset >= 21: scale / bias are per CHANNEL, so the whole chain becomes one node;
* opset 18..20: scale / bias are per GROUP (the reason opset 21 replaced the op), which cannot hold
  nn.GroupNorm's per-channel affine; the node gets unit scale / zero bias and the Mul / Add stay.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from maskface.runtimes.group_norm_graph import chain_scopes, default_opset, group_norm_chains, replace_chains

MIN_OPSET = 18  # GroupNormalization first appears in opset 18
PER_CHANNEL_OPSET = 21  # from here its scale / bias have one value per channel


def fuse_group_norms(model: onnx.ModelProto) -> int:
    """Rewrite every exporter GroupNorm chain of `model` in place; returns how many were rewritten."""
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise ValueError(f"GroupNormalization needs opset >= {MIN_OPSET}; the graph has opset {opset}")
    per_channel = opset >= PER_CHANNEL_OPSET
    graph = model.graph
    replacements: dict[int, list] = {}  # position of a chain's first node -> the new node
    removed: set[int] = set()
    chains = group_norm_chains(model)
    for chain, prefix in zip(chains, chain_scopes(chains)):
        reshape_in, norm, reshape_out, mul, add = chain.nodes
        if per_channel:
            scale, shift, output, swallowed = chain.weight, chain.bias, add.output[0], chain.positions
        else:  # per-group affine cannot express nn.GroupNorm's per-channel one: keep the Mul / Add
            scale, shift = np.ones(chain.groups, chain.weight.dtype), np.zeros(chain.groups, chain.bias.dtype)
            output, swallowed = reshape_out.output[0], chain.positions[:3]
        scale_name, shift_name = f"{prefix}/GroupNormalization_scale", f"{prefix}/GroupNormalization_bias"
        graph.initializer.extend([numpy_helper.from_array(scale.astype(np.float32), scale_name),
                                  numpy_helper.from_array(shift.astype(np.float32), shift_name)])
        replacements[chain.positions[0]] = [helper.make_node(
            "GroupNormalization", [reshape_in.input[0], scale_name, shift_name], [output],
            name=f"{prefix}/GroupNormalization", epsilon=float(chain.epsilon), num_groups=chain.groups)]
        removed.update(swallowed)
    if replacements:
        replace_chains(model, replacements, removed)
    return len(replacements)
