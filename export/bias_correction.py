"""Bias correction of INT8 weight rounding in a QDQ graph (issue 15).

Rounding a conv's weights to INT8 adds (W_q - W) * x to its output. Over the data, that term has the
mean (W_q - W) . E[x] per output channel: the rounding errors of one output channel's weights do not
cancel when the input channels have non-zero means, and post-ReLU inputs always have them. The mean
is a constant offset, so it can be taken out of the bias (the bias correction of Nagel et al. 2019,
"Data-Free Quantization"; here E[x] is measured on the calibration images instead of being derived
from BatchNorm statistics):

    b_c <- b_c - sum_{j, kh, kw} (W_q - W)[c, j, kh, kw] * E[x_{j + group(c) * C_in / groups}]

E[x] is the per-channel mean of the conv's FP32 input over the calibration images (each image's
spatial mean, averaged over the images; zero padding at the borders is ignored). W is the FP32 graph's
weight and W_q the QDQ graph's dequantised INT8 weight, so the offset is exact for the rounding the
runtime will do. The new bias is requantised to INT32 with the bias's own scale. Convolutions kept in
FP32 (no DequantizeLinear on their weight) are left alone. A quantised conv without a bias (the FPN
and context convs, which a GroupNorm follows) gets one, INT32 with scale input scale x weight scale as
ONNX Runtime's quantiser writes biases: the GroupNorm removes the mean of its group's offsets but not
how they differ between its channels.

Measured on the demo model: export/quantize_int8.py's module doc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from export.equalize import channel_statistics, conv_groups

INT32 = np.iinfo(np.int32)


@dataclass
class BiasCorrectionSummary:
    convs: int  # convolutions whose bias was corrected
    median_relative_offset: float  # median of |offset| / (|FP32 bias| + 1e-6) over the channels of convs that had a bias
    max_offset: float  # largest |offset| taken out of one channel
    biases_added: int = 0  # of those, convs that had no bias


def rounding_offset(w_float: np.ndarray, w_quantised: np.ndarray, input_mean: np.ndarray, groups: int) -> np.ndarray:
    """(W_q - W) . E[x] per output channel of a conv with `groups` groups (module doc).

    w_*: [C_out, C_in / groups, kh, kw]; input_mean: [C_in]."""
    c_out, c_in_per_group = w_float.shape[:2]
    if c_out % groups or input_mean.size != c_in_per_group * groups:
        raise ValueError(f"weight {w_float.shape} with {groups} groups does not fit {input_mean.size} input channels")
    error = (w_quantised.astype(np.float64) - w_float.astype(np.float64)).sum(axis=(2, 3))  # [C_out, C_in/g]
    group_of = np.arange(c_out) // (c_out // groups)
    means = input_mean.astype(np.float64).reshape(groups, c_in_per_group)[group_of]  # [C_out, C_in/g]
    return (error * means).sum(axis=1)


def dequantize(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear: (values - zero_point) * scale, per `axis` when the scale is a vector."""
    shape = [1] * values.ndim
    if np.ndim(scale) == 1 and values.ndim > 1:
        shape[axis] = -1
    scale = np.reshape(scale, shape) if np.ndim(scale) else scale
    zp = 0 if zero_point is None else (np.reshape(zero_point, shape) if np.ndim(zero_point) else zero_point)
    return (values.astype(np.float64) - np.asarray(zp, np.float64)) * scale


def _optional(inputs, index: int) -> bool:
    """Whether an ONNX node's optional input `index` is given (absent, or named "")."""
    return len(inputs) > index and bool(inputs[index])


def quant_axis(node: onnx.NodeProto) -> int:
    """The axis attribute of a QuantizeLinear / DequantizeLinear (ONNX's default 1)."""
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _add_bias(model: onnx.ModelProto, conv: onnx.NodeProto, weight_dq: onnx.NodeProto,
              producer: dict[str, onnx.NodeProto], values: dict[str, onnx.TensorProto]) -> onnx.NodeProto | None:
    """A zero INT32 bias behind a new DequantizeLinear (returned; the caller puts it into the graph) for
    a quantised conv that has none; None when the conv's input is not dequantised with one scale (then
    there is no INT32 scale to give it). The new initializers go into the graph and into `values`."""
    input_dq = producer.get(conv.input[0])
    if input_dq is None or input_dq.op_type != "DequantizeLinear" or input_dq.input[1] not in values:
        return None
    input_scale = numpy_helper.to_array(values[input_dq.input[1]])
    if input_scale.size != 1:
        return None
    weight_scale = numpy_helper.to_array(values[weight_dq.input[1]]).astype(np.float32).reshape(-1)
    scale = (float(input_scale) * weight_scale).astype(np.float32)
    base = f"{conv.name}_bias_correction"
    for value, name in ((np.zeros(scale.size, np.int32), f"{base}_quantized"), (scale, f"{base}_scale"),
                        (np.zeros(scale.size, np.int32), f"{base}_zero_point")):
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        values[name] = model.graph.initializer[-1]
    node = onnx.helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                 [base], name=f"{base}_DequantizeLinear", axis=0)
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = base
    producer[base] = node
    return node


def dequantised_initializer(tensor: str, producer: dict[str, onnx.NodeProto],
                            values: dict[str, onnx.TensorProto]) -> onnx.NodeProto | None:
    """The DequantizeLinear that gives `tensor` from a stored (quantised) initializer, or None."""
    node = producer.get(tensor)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in values:
        return None
    return node


def quantised_convs(graph: onnx.GraphProto, fp32_convs: dict[str, onnx.NodeProto], producer: dict[str, onnx.NodeProto],
                    values: dict[str, onnx.TensorProto]) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(conv, the DequantizeLinear of its weight) for every conv of `graph` that has an FP32 twin of the
    same name and a dequantised initializer as its weight (the convs kept in FP32 have none)."""
    out = []
    for conv in graph.node:
        if conv.op_type == "Conv" and conv.name in fp32_convs:
            weight_dq = dequantised_initializer(conv.input[1], producer, values)
            if weight_dq is not None:
                out.append((conv, weight_dq))
    return out


def correct_biases(quantised: onnx.ModelProto, fp32: onnx.ModelProto, feeds: Sequence[dict]) -> BiasCorrectionSummary:
    """Correct, in place, the INT32 bias of every conv of `quantised` (a QDQ graph of `fp32`, same node
    names) whose weight is a dequantised initializer, giving one to a conv without (module doc); E[x]
    is measured on `feeds` in `fp32`."""
    graph = quantised.graph
    values = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    fp32_convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    fp32_values = {i.name: i for i in fp32.graph.initializer}

    work = []  # (groups, FP32 twin's inputs, weight DQ's inputs, its axis, bias DQ's inputs) per conv
    added: dict[str, onnx.NodeProto] = {}  # conv name -> the DequantizeLinear of the bias it was given
    for conv, weight_dq in quantised_convs(graph, fp32_convs, producer, values):
        if _optional(conv.input, 2):
            bias_dq = dequantised_initializer(conv.input[2], producer, values)
        else:
            bias_dq = _add_bias(quantised, conv, weight_dq, producer, values)
            if bias_dq is not None:
                added[conv.name] = bias_dq
        if bias_dq is not None:  # names only: the node list is rebuilt below
            twin = fp32_convs[conv.name]
            work.append((conv_groups(conv), list(twin.input), list(weight_dq.input), quant_axis(weight_dq), list(bias_dq.input)))
    if added:
        nodes = []
        for node in graph.node:
            if node.name in added:
                nodes.append(added[node.name])
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
    if not work:
        return BiasCorrectionSummary(0, 0.0, 0.0)
    means = channel_statistics(fp32, [twin[0] for _, twin, _, _, _ in work], feeds, "mean")

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(values[name])

    relative, largest = [], 0.0
    for groups, twin, weight_in, axis, bias_in in work:
        w_float = numpy_helper.to_array(fp32_values[twin[1]])
        w_zp = array(weight_in[2]) if _optional(weight_in, 2) else None
        w_quantised = dequantize(array(weight_in[0]), array(weight_in[1]), w_zp, axis)
        offset = rounding_offset(w_float, w_quantised, means[twin[0]], groups)
        has_bias = _optional(twin, 2)
        b_float = numpy_helper.to_array(fp32_values[twin[2]]).astype(np.float64) if has_bias else np.zeros(offset.shape)
        b_scale = array(bias_in[1]).astype(np.float64)
        b_zp = array(bias_in[2]).astype(np.float64) if _optional(bias_in, 2) else 0.0
        target = np.round((b_float - offset) / b_scale + b_zp)
        stored = values[bias_in[0]]
        stored.CopyFrom(numpy_helper.from_array(np.clip(target, INT32.min, INT32.max).astype(np.int32), stored.name))
        if has_bias:
            relative.append(np.abs(offset) / (np.abs(b_float) + 1e-6))
        largest = max(largest, float(np.abs(offset).max()))
    return BiasCorrectionSummary(len(work), float(np.median(np.concatenate(relative))) if relative else 0.0, largest,
                                 len(added))
