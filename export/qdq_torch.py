"""A QDQ ONNX graph run as a differentiable torch function, for quantisation-aware fine-tuning (issue 15).

The INT8 detector is an ONNX graph: QuantizeLinear / DequantizeLinear pairs on the activations, INT8
weights and INT32 biases behind DequantizeLinear. `QdqGraph` evaluates the part of that graph which
computes the requested tensors, node by node, with torch ops of the same semantics, so that

* its forward pass is the runtime's arithmetic: each activation pair rounds to the same UINT8 grid
  (half to even, saturating), each weight and bias is the graph's own integer times its scale;
* its backward pass goes through the roundings as straight-through estimators (gradient 1 inside the
  grid's range, 0 where it saturates), the usual rule of quantisation-aware training;
* each quantised conv's weights and bias are parameters, kept in units of their quantisation step
  (a weight of 1.0 is one INT8 step), and `to_onnx` writes them back as the graph's integers. The
  scales and zero points, the FP32 layers and the graph's structure do not change, so the fine-tuned
  graph has the inputs, outputs and runtime behaviour of the one it came from.

Only the ops the detector's trunk and heads use are implemented; any other raises `UnsupportedOpError`
naming it. tests/export/test_qdq_torch.py checks every node, given ONNX Runtime's own inputs, against
ONNX Runtime on a QDQ graph that ONNX Runtime's quantiser wrote. Run end to end, the two differ where a
value falls within float32 noise of a rounding boundary (they sum a conv's products in different orders)
and by what such a flip moves downstream; on the demo detector (three train images) that is as large as
the difference between ONNX Runtime's own optimised and unoptimised runs of the graph (first image: mean
|difference| of the score logits 0.019 against 0.019, of m2 0.009 against 0.009; INT8 against FP32:
0.029 and 0.014).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

WEIGHT_RANGE = (-127, 127)  # symmetric INT8 weights, as ONNX Runtime's quantiser writes them
INT32 = np.iinfo(np.int32)


class UnsupportedOpError(NotImplementedError):
    pass


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear); the gradient passes unchanged."""
    return x + (torch.round(x) - x).detach()


def _integer_range(zero_point: np.ndarray | None) -> tuple[int, int]:
    dtype = np.uint8 if zero_point is None else zero_point.dtype  # ONNX: no zero point means uint8
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _along(values: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """A per-axis vector shaped to broadcast over a rank-`ndim` tensor (a scalar stays a scalar)."""
    if values.ndim == 0 or ndim <= 1:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, auto_pad=b"NOTSET", **_):
    if auto_pad not in (b"NOTSET", b""):
        raise UnsupportedOpError(f"Conv auto_pad={auto_pad!r}: export with explicit pads")
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x, padding = F.pad(x, (left, right, top, bottom)), 0
    else:
        padding = (top, left)
    return F.conv2d(x, w, b, tuple(strides), padding, tuple(dilations), group)


def _max_pool(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=0, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise UnsupportedOpError("MaxPool with asymmetric pads")
    return F.max_pool2d(x, tuple(kernel_shape), tuple(strides), (top, left), tuple(dilations), bool(ceil_mode))


def _instance_norm(x, scale, bias, epsilon=1e-5, **_):
    mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - mean) / torch.sqrt(var + epsilon) * scale.reshape(shape) + bias.reshape(shape)


def _resize(x, roi=None, scales=None, sizes=None, mode=b"nearest", coordinate_transformation_mode=b"half_pixel",
            nearest_mode=b"round_prefer_floor", **_):
    # torch's "nearest" picks floor(dst * in / out): ONNX nearest with asymmetric coordinates and floor.
    if mode != b"nearest" or coordinate_transformation_mode != b"asymmetric" or nearest_mode != b"floor":
        raise UnsupportedOpError(f"Resize mode={mode!r} coordinates={coordinate_transformation_mode!r} "
                                 f"nearest_mode={nearest_mode!r}")
    if sizes is not None and sizes.numel():
        size = [int(v) for v in sizes.tolist()[2:]]
    else:
        size = [int(math.floor(d * s)) for d, s in zip(x.shape[2:], scales.tolist()[2:])]
    return F.interpolate(x, size=size, mode="nearest")


def _reshape(x, shape, allowzero=0, **_):
    target = [int(v) for v in shape.tolist()]
    if not allowzero:
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _slice(x, starts, ends, axes=None, steps=None, **_):
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = [1] * len(axes) if steps is None else steps.tolist()
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts.tolist(), ends.tolist(), steps):
        if step != 1:
            raise UnsupportedOpError("Slice with a step other than 1")
        size = x.shape[axis]
        index[axis] = slice(max(min(start, size), -size), max(min(end, size), -size - 1))
    return x[tuple(index)]


def _gather(x, indices, axis=0, **_):
    picked = torch.index_select(x, axis, indices.reshape(-1) % x.shape[axis])
    return picked.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _unsqueeze(x, axes, **_):
    for axis in sorted(a % (x.ndim + len(axes)) for a in axes.tolist()):
        x = x.unsqueeze(axis)
    return x


def _clip(x, low=None, high=None, **_):
    return torch.clamp(x, None if low is None else low.item(), None if high is None else high.item())


OPS: dict[str, Callable] = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "InstanceNormalization": _instance_norm,
    "Resize": _resize,
    "Reshape": _reshape,
    "Slice": _slice,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Clip": _clip,
    "Relu": lambda x, **_: torch.relu(x),
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "Identity": lambda x, **_: x,
    "Shape": lambda x, **_: torch.tensor(list(x.shape), dtype=torch.int64),
    "Concat": lambda *xs, axis, **_: torch.cat(xs, dim=axis),
}


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype in (np.int8, np.uint8, np.int32):
        return torch.from_numpy(array.astype(np.float32))  # quantised integers, exact in float32
    return torch.from_numpy(np.array(array))


class QdqGraph(torch.nn.Module):
    """The nodes of a QDQ graph that compute `outputs`, as a torch module (module doc).

    Parameters (`trainable=True`): for every DequantizeLinear that reads an INT8 weight of a Conv, the
    weight in units of its step (init: the graph's integers); for every one that reads an INT32 Conv
    bias, the bias's change in units of bias step x sqrt(fan-in) (init 0; a step of the same order as
    the weights', so one learning rate suits both). Everything else is a constant."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str], trainable: bool = True):
        super().__init__()
        graph = model.graph
        self.input_names = [i.name for i in graph.input]
        self.output_names = list(outputs)
        producer = {o: n for n in graph.node for o in n.output}
        self._initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.nodes = self._needed_nodes(graph, producer)
        self._attrs = {node.output[0]: _attributes(node) for node in self.nodes}  # read once, not per run
        self._constants: dict[str, torch.Tensor] = {n: _tensor(a) for n, a in self._initializers.items()}
        for node in self.nodes:
            if node.op_type == "Constant":
                self._constants[node.output[0]] = _tensor(numpy_helper.to_array(self._attrs[node.output[0]]["value"]))
        self.weights = torch.nn.ParameterDict()
        self.biases = torch.nn.ParameterDict()
        self._param_of: dict[str, tuple[str, str, float, str]] = {}  # DQ output -> (kind, key, unit, initializer)
        if trainable:
            self._make_parameters(producer)

    # -- structure --------------------------------------------------------------------------------
    def _needed_nodes(self, graph, producer) -> list[onnx.NodeProto]:
        missing = [o for o in self.output_names if o not in producer]
        if missing:
            raise KeyError(f"no node of the graph produces {missing}")
        needed, stack = set(), list(self.output_names)
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in needed:
                continue
            needed.add(id(node))
            stack.extend(i for i in node.input if i)
        nodes = [n for n in graph.node if id(n) in needed]  # ONNX lists nodes in topological order
        unknown = sorted({n.op_type for n in nodes} - set(OPS) - {"QuantizeLinear", "DequantizeLinear", "Constant"})
        if unknown:
            raise UnsupportedOpError(f"QdqGraph cannot run {unknown}: add them to export/qdq_torch.OPS")
        return nodes

    def _make_parameters(self, producer) -> None:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for node in self.nodes:
            if node.op_type != "DequantizeLinear" or node.input[0] not in self._initializers:
                continue
            values = self._initializers[node.input[0]]
            users = consumers.get(node.output[0], [])
            conv = users[0] if len(users) == 1 and users[0].op_type == "Conv" else None
            if conv is None:
                continue
            key = node.input[0].replace(".", "_")
            if key in self.weights or key in self.biases:
                raise ValueError(f"{node.input[0]}: a parameter named {key!r} exists already (a shared or "
                                 f"clashing initializer)")
            if values.dtype == np.int8 and conv.input[1] == node.output[0]:
                self.weights[key] = torch.nn.Parameter(torch.from_numpy(values.astype(np.float32)))
                self._param_of[node.output[0]] = ("weight", key, 1.0, node.input[0])
            elif values.dtype == np.int32 and len(conv.input) > 2 and conv.input[2] == node.output[0]:
                weight_dq = producer[conv.input[1]]
                shape = self._initializers.get(weight_dq.input[0], np.zeros((1, 1, 1, 1))).shape
                unit = math.sqrt(float(np.prod(shape[1:])))
                # the change, not the bias: INT32 biases exceed float32's 2^24 exact integers
                self.biases[key] = torch.nn.Parameter(torch.zeros(values.shape, dtype=torch.float32))
                self._param_of[node.output[0]] = ("bias", key, unit, node.input[0])


    # -- evaluation -------------------------------------------------------------------------------
    def _dequantize(self, node, values: dict) -> torch.Tensor:
        attrs = self._attrs[node.output[0]]
        scale = values[node.input[1]]
        zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else torch.zeros(())
        param = self._param_of.get(node.output[0])
        if param is not None:
            kind, key, unit, _ = param
            if kind == "weight":
                q = torch.clamp(round_ste(self.weights[key]), *WEIGHT_RANGE)
            else:
                q = values[node.input[0]] + round_ste(self.biases[key] * unit)
        else:
            q = values[node.input[0]]
        axis = attrs.get("axis", 1) % max(q.ndim, 1)
        return (q - _along(zero, axis, q.ndim)) * _along(scale, axis, q.ndim)

    def _quantize(self, node, values: dict) -> torch.Tensor:
        attrs = self._attrs[node.output[0]]
        x, scale = values[node.input[0]], values[node.input[1]]
        zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        low, high = _integer_range(self._initializers.get(zero_name) if zero_name else None)
        zero = values[zero_name] if zero_name else torch.zeros(())
        axis = attrs.get("axis", 1) % max(x.ndim, 1)
        q = round_ste(x / _along(scale, axis, x.ndim)) + _along(zero, axis, x.ndim)
        return torch.clamp(q, low, high)

    def run_node(self, node: onnx.NodeProto, values: dict) -> torch.Tensor:
        """One node's output from `values` (tensor name -> tensor), with this module's parameters."""
        if node.op_type == "Constant":
            return self._constants[node.output[0]]
        if node.op_type == "DequantizeLinear":
            return self._dequantize(node, values)
        if node.op_type == "QuantizeLinear":
            return self._quantize(node, values)
        args = [values[i] if i else None for i in node.input]
        while args and args[-1] is None:
            args.pop()
        return OPS[node.op_type](*args, **self._attrs[node.output[0]])

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        values = dict(self._constants)
        values.update(zip(self.input_names, inputs))
        for node in self.nodes:
            values[node.output[0]] = self.run_node(node, values)
        return {name: values[name] for name in self.output_names}

    # -- writing back -----------------------------------------------------------------------------
    def integer_values(self) -> dict[str, np.ndarray]:
        """The graph's weight / bias initializers as the parameters now round them: {initializer name: array}."""
        out = {}
        for kind, key, unit, name in self._param_of.values():
            with torch.no_grad():
                if kind == "weight":
                    out[name] = torch.clamp(torch.round(self.weights[key]), *WEIGHT_RANGE).numpy().astype(np.int8)
                else:
                    change = torch.round(self.biases[key].double() * unit).numpy().astype(np.int64)
                    out[name] = np.clip(self._initializers[name].astype(np.int64) + change,
                                        INT32.min, INT32.max).astype(np.int32)
        return out

    def to_onnx(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` (the graph this module was made from) with its integers replaced by the parameters'."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = self.integer_values()
        for init in out.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
        return out
