"""The exporter's GroupNorm chains in an ONNX graph: found once here, rewritten by export/groupnorm.py
(GroupNormalization nodes) and here (per-channel moments, for OpenVINO).

torch.onnx (dynamo=False) exports nn.GroupNorm at every opset as five nodes:

    Reshape(x, [0, G, -1]) -> InstanceNormalization(scale=1, bias=0) -> Reshape(., Shape(x))
    -> Mul(., weight[C, 1, 1]) -> Add(., bias[C, 1, 1])

Only chains whose constants match exactly are returned, so a rewrite of them is exact (the same mean /
variance / epsilon); anything else is left alone.

Why moments for OpenVINO: its CPU plugin runs the [N, G, C/G * H * W] Reshape + InstanceNormalization
(MVN) in the plain NCHW layout, so every GroupNorm sits between two layout reorders from and back to the
blocked layout of the convolutions around it. As per-channel moments (two ReduceMeans over H, W, a
[C, C] group-averaging MatMul on the [1, C] means, and a per-channel scale and shift) nothing is
reshaped and most reorders go. Demo model, 2-core Zen 5, `benchmarks/op_profile.py --compare-group-norms`
(25 interleaved rounds, time / ONNX Runtime FP32): OpenVINO INT8 0.45x against 0.49x as exported (layout
reorders 1.1 against 4.3 ms), BF16 0.56x against 0.59x (1.9 against 5.5 ms), FP32 1.07x against 1.77x
(docs/DEPLOYMENT.md 5.4 has a second run).
The chains whose result leaves the graph (the context modules' branches, concatenated into the FPN maps
m2..m6 the keypoint head reads) keep the MVN form: rewritten too, OpenVINO handed those maps out through
a reference reorder from its blocked layout (6.5 ms for m2 alone, INT8, a throw-away build). ONNX Runtime
FP32 ran the moments form at 1.04x its time, so only OpenVINO reads it (OpenVinoGraph).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ReduceMean takes its axes as an input from opset 18 (an attribute before)
REDUCE_AXES_INPUT_OPSET = 18
# element-wise nodes a GroupNorm's result may pass through on its way out of the graph
PASS_THROUGH = ("Relu", "Clip")


@dataclass
class GroupNormChain:
    nodes: tuple  # Reshape, InstanceNormalization, Reshape, Mul, Add
    positions: tuple[int, ...]  # theirs in graph.node (node protos have no stable identity of their own)
    groups: int
    epsilon: float
    weight: np.ndarray  # [C]
    bias: np.ndarray  # [C]

    @property
    def input(self) -> str:
        return self.nodes[0].input[0]

    @property
    def output(self) -> str:
        return self.nodes[4].output[0]


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


def consumer_map(graph: onnx.GraphProto) -> dict[str, list]:
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def _whole_shape(node) -> bool:
    """A Shape node of its whole input (ONNX Runtime's quantiser writes the default start=0 explicitly)."""
    return all(a.name == "start" and a.i == 0 for a in node.attribute)


def _match_chain(reshape_in, producers, consumers, constants, graph_outputs, position) -> GroupNormChain | None:
    """The chain that starts at `reshape_in`, or None; position: id(node) -> its index in graph.node."""
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
            or not _whole_shape(shape_node)):
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
    nodes = (reshape_in, norm, reshape_out, mul, add)
    return GroupNormChain(nodes, tuple(position[id(n)] for n in nodes), groups, epsilon, weight.reshape(-1),
                          bias.reshape(-1))


def _other_constant(node, data_input, constants):
    others = [i for i in node.input if i != data_input]
    return constants.get(others[0]) if len(others) == 1 else None


def group_norm_chains(model: onnx.ModelProto) -> list[GroupNormChain]:
    """Every exporter GroupNorm chain of `model`, in graph order."""
    graph = model.graph
    constants = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    consumers = consumer_map(graph)
    graph_outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    position = {id(node): i for i, node in enumerate(nodes)}  # valid while `nodes` holds the wrappers
    chains = []
    for node in nodes:
        if node.op_type == "Reshape":
            chain = _match_chain(node, producers, consumers, constants, graph_outputs, position)
            if chain is not None:
                chains.append(chain)
    return chains


def chain_scopes(chains: list[GroupNormChain]) -> list[str]:
    """The name scope of each chain's new nodes: its InstanceNormalization's name up to the last "/" (the
    GroupNorm module), with the chain's index appended where scopes repeat (nodes without names)."""
    scopes, seen = [], set()
    for index, chain in enumerate(chains):
        scope = chain.nodes[1].name.rsplit("/", 1)[0]
        if scope in seen:
            scope = f"{scope}_{index}"
        seen.add(scope)
        scopes.append(scope)
    return scopes


def replace_chains(model: onnx.ModelProto, replacements: dict[int, list], removed: set[int]) -> None:
    """Put replacements[position] in place of the node at that position of graph.node, drop the nodes at
    the positions in `removed`, then the dead nodes and initializers."""
    graph = model.graph
    kept = []
    for i, node in enumerate(graph.node):
        if i in replacements:
            kept.extend(replacements[i])
        elif i not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    remove_dead_nodes(model)


def leaves_the_graph(tensor: str, consumers, graph_outputs) -> bool:
    """Whether `tensor`, or what one node makes of it after element-wise PASS_THROUGH nodes, is a graph output."""
    if tensor in graph_outputs:
        return True
    for user in consumers.get(tensor, []):
        if any(o in graph_outputs for o in user.output):
            return True
        if user.op_type in PASS_THROUGH and leaves_the_graph(user.output[0], consumers, graph_outputs):
            return True
    return False


def group_norms_as_moments(model: onnx.ModelProto) -> int:
    """Rewrite, in place, each GroupNorm chain whose result stays inside the graph as per-channel moments
    (module doc); returns how many were rewritten. Exact in real arithmetic: two passes, the variance of
    x minus the group mean, so no cancellation where the mean is large."""
    graph = model.graph
    reduce_axes_input = default_opset(model) >= REDUCE_AXES_INPUT_OPSET
    consumers = consumer_map(graph)
    graph_outputs = {o.name for o in graph.output}
    replacements, removed = {}, set()
    chains = group_norm_chains(model)
    for chain, scope in zip(chains, chain_scopes(chains)):
        if leaves_the_graph(chain.output, consumers, graph_outputs):
            continue
        replacements[chain.positions[0]] = _moment_nodes(graph, chain, f"{scope}/moments", reduce_axes_input)
        removed.update(chain.positions)
    if replacements:
        replace_chains(model, replacements, removed)
    return len(replacements)


def _moment_nodes(graph: onnx.GraphProto, chain: GroupNormChain, prefix: str, reduce_axes_input: bool) -> list:
    channels = chain.weight.size
    per_group = channels // chain.groups
    group_of = np.arange(channels) // per_group
    averaging = (group_of[:, None] == group_of[None, :]).astype(np.float32) / per_group  # [C, C]
    constants = {"averaging": averaging, "axes": np.array([2, 3], np.int64),
                 "row": np.array([1, channels], np.int64), "column": np.array([1, channels, 1, 1], np.int64),
                 "epsilon": np.array(chain.epsilon, np.float32),
                 "weight": chain.weight.reshape(1, channels, 1, 1).astype(np.float32),
                 "bias": chain.bias.reshape(1, channels, 1, 1).astype(np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, f"{prefix}/{k}") for k, v in constants.items())
    def name(short):  # of a new node and of its output
        return f"{prefix}/{short}"

    def node(op_type, inputs, short, **attributes):
        return helper.make_node(op_type, inputs, [name(short)], name=name(short), **attributes)

    def channel_mean(tensor, short):  # [1, C, H, W] -> its per-channel mean averaged over each group, [1, C, 1, 1]
        reduce = (node("ReduceMean", [tensor, name("axes")], f"{short}_channels") if reduce_axes_input
                  else node("ReduceMean", [tensor], f"{short}_channels", axes=[2, 3]))
        return [reduce, node("Reshape", [name(f"{short}_channels"), name("row")], f"{short}_row"),
                node("MatMul", [name(f"{short}_row"), name("averaging")], f"{short}_groups"),
                node("Reshape", [name(f"{short}_groups"), name("column")], short)]

    x = chain.input
    nodes = channel_mean(x, "mean")
    nodes += [node("Sub", [x, name("mean")], "centred"), node("Mul", [name("centred"), name("centred")], "squares")]
    nodes += channel_mean(name("squares"), "variance")
    nodes += [node("Add", [name("variance"), name("epsilon")], "variance_eps"),
              node("Sqrt", [name("variance_eps")], "std"),
              node("Div", [name("weight"), name("std")], "scale"),
              node("Mul", [name("centred"), name("scale")], "scaled"),
              helper.make_node("Add", [name("scaled"), name("bias")], [chain.output], name=name("shifted"))]
    return nodes


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
