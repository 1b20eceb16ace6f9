"""FP32 ONNX graph -> mixed-precision FP16 graph for strongly typed TensorRT builds.

TensorRT 11 has no FP16 builder flag: a network is strongly typed, and every tensor keeps the type
the ONNX graph gives it. FP16 engines therefore come from an FP16 ONNX graph, which this module
writes; TensorRT 10 builds the same graph with a strongly typed network (BuilderFlag.FP16 is deprecated
since 10.12; see export/tensorrt_build.py for the evidence).

The rule (in docs/CONTRACTS.md's terms; every part is a field of Fp16Policy):

* FP16 region = nodes whose name starts with one of the TorchScript exporter's module scopes
  ``/backbone/``, ``/fpn/``, ``/context.`` (detector) and ``/keypoint_head/`` (keypoint graph),
  and whose op is a plain float op (Conv, ConvTranspose, Relu, Clip, Add, Mul, Concat, Resize,
  MaxPool, Reshape, ...; see FP16_OPS) with only float32 data inputs. Convolutions seed the region;
  another op joins only when a data input already comes from an FP16 node. Their float constants
  (weights, FrozenBatchNorm scale/shift, Clip bounds) become FP16 initializers.
* GroupNorm stays FP32 by default (``norm_fp16=False``): every node of a module scope that holds
  an InstanceNormalization (the exporter writes GroupNorm as Reshape -> InstanceNormalization ->
  Reshape -> Mul -> Add) is kept in FP32, so mean / variance over up to ~200k values are never
  computed in half precision (TensorRT's strongly typed normalisation computes in its input type).
* Everything else stays FP32: the detection head's 1x1 convs (they read M2..M6, which are FP32
  graph outputs anyway), Sigmoid, TopK, anchor / box decoding; the keypoint graph's RoIAlign (the
  custom ``MultiLevelRoIAlign`` node reads the FP32 maps and FP32 rois, and its pooled output is
  cast to FP16 for the conv tower), Softmax / ArgMax / heatmap decoding. Shape arithmetic is integer
  and untouched.
* Graph inputs and outputs keep their FP32 types; Cast nodes are inserted at every boundary
  (one per tensor and direction). Shape/Size read the FP16 tensor directly (no cast needed).

A weight that does not fit FP16 (|w| > 65504) keeps its node in FP32. After the rewrite the graph
passes onnx.checker and shape inference (strict where it has only standard ops).

Checking on a CPU: ONNX Runtime's CPU provider (x86) has no FP16 kernels for Conv, ConvTranspose,
InstanceNormalization, Relu, Clip, Add, Mul, Resize or MaxPool. It accepts the FP16 graph, inserts
casts, computes those nodes in FP32 and then removes back-to-back FP16<->FP32 cast pairs, so a plain
ORT run sees only the rounding of the weights to FP16. ``emulate_fp16_storage`` adds an Identity (a
type-agnostic op that ORT does run in FP16) after every FP16-typed node output, which stores each
activation in FP16 as a GPU does; run that graph with graph optimisations off (ORT_DISABLE_ALL) so
the Identity nodes stay. Arithmetic inside one op is still FP32 in that emulation (as in TensorRT's
FP16 convolutions, which accumulate in FP32).

Seeded (untrained) models: a freshly initialised backbone has no BatchNorm statistics, and its deep
activations are ~1e-6, inside FP16's subnormal range (< 6.1e-5). Their FP16 engine loses M4..M6
(measured in the storage emulation: M5/M6 error = their whole range). FP16 parity is meaningful
only for trained weights (or, in tests, a model whose frozen BN statistics were set from a batch).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

#: Module scopes (node-name prefixes written by torch.onnx's TorchScript exporter) computed in FP16.
DEFAULT_SCOPES: tuple[str, ...] = ("/backbone/", "/fpn/", "/context.", "/keypoint_head/")

#: Float ops that are safe in FP16 (TensorRT and ONNX Runtime CPU both have FP16 kernels for them).
FP16_OPS: frozenset[str] = frozenset({
    "Conv", "ConvTranspose", "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Add", "Sub", "Mul",
    "Concat", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Transpose",
    "Squeeze", "Unsqueeze", "Slice", "Split", "Pad", "Identity", "InstanceNormalization",
    "BatchNormalization",
})

#: Inputs that carry the data type for ops where other inputs are shapes / indices / scales.
#: Ops not listed: every input is a data input.
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (0,), "Reshape": (0,), "Slice": (0,), "Split": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Pad": (0, 2), "Expand": (0,), "Tile": (0,),
}

#: Consumers that read only a tensor's shape: they take the FP16 tensor as it is.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})

#: Ops whose weight (input 1) is range-checked before conversion; they also seed the FP16 region:
#: any other op joins it only when one of its data inputs already comes from an FP16 node, so no
#: cast pair is spent on a cheap op between two FP32 ones (e.g. the ReLU after an FP32 GroupNorm).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose"})

SUFFIX_FP16 = "__fp16"
SUFFIX_TO_FP16 = "__to_fp16"


@dataclass(frozen=True)
class Fp16Policy:
    """Which nodes run in FP16 (see the module docstring)."""

    scopes: tuple[str, ...] = DEFAULT_SCOPES
    ops: frozenset[str] = FP16_OPS
    #: GroupNorm modules (scopes holding an InstanceNormalization) in FP16 too.
    norm_fp16: bool = False
    #: Node-name prefixes kept FP32 whatever the other rules say.
    exclude: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"scopes": list(self.scopes), "ops": sorted(self.ops), "norm_fp16": self.norm_fp16,
                "exclude": list(self.exclude)}


@dataclass
class Fp16Report:
    """What convert_to_fp16 did (counts, plus the names of nodes kept FP32 for a reason)."""

    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_to_fp16: int = 0
    casts_to_fp32: int = 0
    converted_constants: int = 0
    kept_for_norm: int = 0
    kept_out_of_range: list[str] = field(default_factory=list)
    policy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _scope(name: str) -> str:
    return name.rsplit("/", 1)[0] + "/" if "/" in name else ""


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names (shape inference, non-strict)."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  # pragma: no cover - inference is best effort; the fallbacks below cover it
        inferred = model
    g = inferred.graph
    for v in list(g.value_info) + list(g.input) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of initializers, Constant nodes (tensor 'value') and Identity chains of those."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _data_inputs(node: onnx.NodeProto) -> list[int]:
    idx = DATA_INPUTS.get(node.op_type, tuple(range(len(node.input))))
    return [i for i in idx if i < len(node.input) and node.input[i]]


def _select_fp16_nodes(model: onnx.ModelProto, policy: Fp16Policy, types: dict[str, int],
                       consts: dict[str, np.ndarray], report: Fp16Report) -> set[int]:
    nodes = model.graph.node
    norm_scopes = {_scope(n.name) for n in nodes if n.op_type == "InstanceNormalization"}
    selected: set[int] = set()
    fp16_tensors: set[str] = set()
    for i, node in enumerate(nodes):  # graph order is topological
        if not any(node.name.startswith(s) for s in policy.scopes):
            continue
        if node.op_type not in policy.ops or any(node.name.startswith(s) for s in policy.exclude):
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        data = _data_inputs(node)
        if not data:
            continue
        in_types = [types.get(node.input[j]) for j in data]
        if node.op_type in ("Conv", "ConvTranspose", "InstanceNormalization") and in_types[0] is None:
            in_types[0] = FLOAT  # these ops only take floats; a custom producer may leave it untyped
        if any(t != FLOAT for t in in_types):
            continue
        if any(types.get(o, FLOAT) != FLOAT for o in node.output if o):
            continue
        if not policy.norm_fp16 and _scope(node.name) in norm_scopes:
            report.kept_for_norm += 1
            continue
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in consts:
            w = consts[node.input[1]]
            if w.size and float(np.max(np.abs(w))) > FP16_MAX:
                report.kept_out_of_range.append(node.name)
                continue
        if node.op_type not in WEIGHTED_OPS and not any(node.input[j] in fp16_tensors for j in data):
            continue
        selected.add(i)
        fp16_tensors.update(o for o in node.output if o)
    return selected


def convert_to_fp16(model: onnx.ModelProto, policy: Fp16Policy | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """Return (FP16 model, report); the input model is not modified."""
    policy = policy or Fp16Policy()
    report = Fp16Report(policy=policy.to_dict())
    src = onnx.ModelProto()
    src.CopyFrom(model)
    graph = src.graph
    types = _elem_types(src)
    consts = _constants(src)
    fp16 = _select_fp16_nodes(src, policy, types, consts, report)
    report.fp16_nodes = len(fp16)
    report.fp32_nodes = len(graph.node) - len(fp16)

    produced_fp16: dict[str, str] = {}  # original name -> FP16 name, for outputs of FP16 nodes
    for i in sorted(fp16):
        for o in graph.node[i].output:
            if o:
                produced_fp16[o] = o + SUFFIX_FP16
    graph_outputs = {o.name for o in graph.output}
    needs_fp32: set[str] = {o for o in produced_fp16 if o in graph_outputs}
    for i, node in enumerate(graph.node):
        if i in fp16:
            continue
        for j, name in enumerate(node.input):
            if name in produced_fp16 and not (node.op_type in SHAPE_ONLY_OPS and j == 0):
                needs_fp32.add(name)

    new_inits: list[TensorProto] = []
    fp16_consts: dict[str, str] = {}
    to_fp16_casts: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def fp16_input(name: str) -> tuple[str, list[onnx.NodeProto]]:
        if name in produced_fp16:
            return produced_fp16[name], []
        if name in consts:
            if name not in fp16_consts:
                value = consts[name]
                if value.dtype != np.float32:
                    raise TypeError(f"constant {name} is {value.dtype}, expected float32")
                fp16_consts[name] = name + SUFFIX_FP16
                new_inits.append(numpy_helper.from_array(np.clip(value, -FP16_MAX, FP16_MAX).astype(np.float16),
                                                         fp16_consts[name]))
                report.converted_constants += 1
            return fp16_consts[name], []
        if name not in to_fp16_casts:
            to_fp16_casts[name] = name + SUFFIX_TO_FP16
            report.casts_to_fp16 += 1
            cast = helper.make_node("Cast", [name], [to_fp16_casts[name]], name=f"{name}/CastToFp16", to=FLOAT16)
            return to_fp16_casts[name], [cast]
        return to_fp16_casts[name], []

    for i, node in enumerate(graph.node):
        if i in fp16:
            node = _copy(node)
            for j in _data_inputs(node):
                name, casts = fp16_input(node.input[j])
                new_nodes.extend(casts)
                node.input[j] = name
            for j, o in enumerate(node.output):
                if o:
                    node.output[j] = produced_fp16[o]
            new_nodes.append(node)
            for o in graph.node[i].output:
                if o in needs_fp32:
                    report.casts_to_fp32 += 1
                    new_nodes.append(helper.make_node("Cast", [produced_fp16[o]], [o], name=f"{o}/CastToFp32", to=FLOAT))
        else:
            node = _copy(node)
            if node.op_type in SHAPE_ONLY_OPS and node.input and node.input[0] in produced_fp16:
                node.input[0] = produced_fp16[node.input[0]]
            new_nodes.append(node)

    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    del graph.value_info[:]
    _remove_unused(graph)
    return src, report


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop Constant / Identity nodes and initializers nobody reads any more (the FP32 weights)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("Constant", "Identity") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input} | outputs
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def check_fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker + shape inference (strict unless a custom-domain node is present); returns the
    inferred model. Graph inputs and outputs must still be FP32 (or the integer types they had)."""
    onnx.checker.check_model(model)
    has_custom = any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not has_custom)
    for v in list(model.graph.input) + list(model.graph.output):
        if v.type.tensor_type.elem_type == FLOAT16:
            raise ValueError(f"graph input/output {v.name} became FP16")
    return inferred


def emulate_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an FP16 graph where every FP16 node output passes through an Identity, so that ONNX
    Runtime on a CPU stores it in FP16 (see the module docstring); run it with ORT_DISABLE_ALL."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        nodes.append(node)
        is_cast_to_fp16 = node.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in node.attribute)
        if node.op_type == "Cast" and not is_cast_to_fp16:
            continue
        for j, name in enumerate(node.output):
            if name.endswith((SUFFIX_FP16, SUFFIX_TO_FP16)):
                raw = name + "__raw"
                node.output[j] = raw
                nodes.append(helper.make_node("Identity", [raw], [name], name=f"{name}/StoreFp16"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, policy: Fp16Policy | None = None) -> Fp16Report:
    """Read an FP32 .onnx, write its FP16 version (atomically), check it, return the report."""
    model = onnx.load(str(src))
    converted, report = convert_to_fp16(model, policy)
    check_fp16_model(converted)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save(converted, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return report


def fp16_path(path: str | os.PathLike) -> Path:
    """detector.onnx -> detector.fp16.onnx (next to it)."""
    path = Path(path)
    return path.with_name(path.stem + ".fp16" + path.suffix)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", nargs="+", help="FP32 .onnx files")
    p.add_argument("--norm-fp16", action="store_true", help="compute GroupNorm in FP16 too")
    args = p.parse_args(argv)
    for src in args.src:
        report = convert_file(src, fp16_path(src), Fp16Policy(norm_fp16=args.norm_fp16))
        print(f"fp16: {src} -> {fp16_path(src)}: {report.fp16_nodes} FP16 nodes, "
              f"{report.casts_to_fp16}+{report.casts_to_fp32} casts, {report.converted_constants} constants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
