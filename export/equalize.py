"""Channel equalisation of Conv -> Relu -> Conv chains, before INT8 calibration (issue 15).

INT8 activations get one scale per tensor, so a channel whose values span 1/50 of the tensor's range
is rounded to a few of its 256 levels. MobileNetV2's trunk is full of such channels (its BatchNorms
are folded into the convs, and the ranges of one tensor's channels differ by 10-1000x). ReLU is
positively homogeneous, relu(x / s) = relu(x) / s for s > 0, so dividing output channel i of the
first conv (weights and bias) by s_i and multiplying input channel i of the second conv by s_i leaves
the FP32 function unchanged; zero padding stays zero. The idea is the cross-layer equalisation of
Nagel et al. 2019 ("Data-Free Quantization"), here driven by measured activation ranges:

* second conv depthwise (its weights are quantised per channel, so their scale does not matter):
  every channel is brought up to the tensor's widest range, s_i = r_i / max(r);
* second conv dense (per-OUTPUT-channel weights, so a column scaled up takes precision from the
  others): s_i = sqrt(r_i / w_i), normalised to max 1, which balances channel i's activation range r_i
  against its weight column's range w_i (their product is invariant);
* s_i is clipped to [1 / max_gain, 1]; a channel that never fires (r_i = 0) keeps s_i = 1.

Only chains where the first conv's output feeds nothing but the Relu, and the Relu's output nothing
but the second conv, are rewritten; a ReLU6 (Clip) is not homogeneous and is never matched. In the
FPN and the context modules a GroupNorm sits between conv and Relu, so they are left alone.
Measured on the demo model: export/quantize_int8.py's module doc.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

DEFAULT_MAX_GAIN = 100.0


@dataclass(frozen=True)
class ConvPair:
    first: str  # conv node names
    second: str
    activation: str  # the Relu's output tensor
    depthwise: bool


def conv_groups(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def find_pairs(model: onnx.ModelProto) -> list[ConvPair]:
    """The graph's Conv -> Relu -> Conv chains that equalisation may rewrite (module doc)."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    uses = {name: len(nodes) for name, nodes in consumers.items()}
    initializers = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    pairs = []
    for first in graph.node:
        if first.op_type != "Conv" or first.output[0] in graph_outputs:
            continue
        after = consumers.get(first.output[0], [])
        if len(after) != 1 or after[0].op_type != "Relu" or after[0].output[0] in graph_outputs:
            continue
        relu = after[0]
        nxt = consumers.get(relu.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or nxt[0].input[0] != relu.output[0]:
            continue
        second = nxt[0]
        weights = [first.input[1], second.input[1]] + ([first.input[2]] if len(first.input) > 2 and first.input[2] else [])
        if not all(w in initializers and uses[w] == 1 for w in weights):
            continue  # shared or computed weights: scaling them would change another node
        channels = initializers[first.input[1]].dims[0]
        group = conv_groups(second)
        if group == 1:
            depthwise = False
        elif group == channels and initializers[second.input[1]].dims[1] == 1:
            depthwise = True
        else:
            continue
        pairs.append(ConvPair(first.name, second.name, relu.output[0], depthwise))
    return pairs


def probe_session(model: onnx.ModelProto, tensors: Sequence[str]):
    """(ONNX Runtime CPU session of a copy of `model` that also outputs the named tensors, the names once
    each: convs that share an input ask for it more than once)."""
    from maskface.runtimes.ort_runtime import ort_session

    tensors = list(dict.fromkeys(tensors))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in known)
    return ort_session(probe.SerializeToString()), tensors


def channel_statistics(model: onnx.ModelProto, tensors: Sequence[str], feeds: Sequence[dict],
                       statistic: str) -> dict[str, np.ndarray]:
    """Per-channel statistic of the named [N, C, H, W] tensors over `feeds` (ONNX Runtime, CPU):
    "max", the largest value over every feed, or "mean", each feed's spatial mean averaged over the
    feeds (images of different sizes weigh alike)."""
    if statistic not in ("max", "mean"):
        raise ValueError(f"statistic must be 'max' or 'mean', got {statistic!r}")
    session, tensors = probe_session(model, tensors)
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(list(tensors), feed)):
            if statistic == "max":
                peak = value.max(axis=(0, 2, 3))
                out[name] = peak if name not in out else np.maximum(out[name], peak)
            else:
                out[name] = out.get(name, 0.0) + value.mean(axis=(0, 2, 3), dtype=np.float64) / len(feeds)
    return out


def equalisation_scales(activation_range: np.ndarray, second_weight: np.ndarray, depthwise: bool,
                        max_gain: float = DEFAULT_MAX_GAIN) -> np.ndarray:
    """s per channel (module doc): the first conv's channel i is divided by s_i, the second conv's
    input channel i multiplied by it."""
    r = np.asarray(activation_range, np.float64)
    alive = r > 0
    if not alive.any():
        return np.ones_like(r)
    if depthwise:
        s = r / r.max()
    else:
        w = np.abs(second_weight).max(axis=(0, 2, 3)).astype(np.float64)
        balance = np.sqrt(r / np.maximum(w, np.finfo(np.float32).tiny))
        s = balance / balance[alive].max()
    return np.where(alive, np.clip(s, 1.0 / max_gain, 1.0), 1.0)


@dataclass
class EqualisationSummary:
    pairs: int
    channels: int
    median_gain: float  # median of 1 / s over the rewritten channels
    max_gain: float


def equalize_graph(in_path: str | Path, out_path: str | Path, feeds: Sequence[dict],
                   max_gain: float = DEFAULT_MAX_GAIN) -> EqualisationSummary:
    """Rewrite every find_pairs chain of the graph at `in_path` with scales measured on `feeds`
    (the calibration inputs) and save it to `out_path` (same function in FP32)."""
    if max_gain < 1:
        raise ValueError(f"max_gain must be >= 1 (1 leaves the graph unchanged), got {max_gain}")
    model = onnx.load(str(in_path))
    pairs = find_pairs(model)
    nodes = {n.name: n for n in model.graph.node}
    initializers = {i.name: i for i in model.graph.initializer}
    ranges = channel_statistics(model, [p.activation for p in pairs], feeds, "max") if pairs and feeds else {}
    gains = []
    for pair in pairs:
        first, second = nodes[pair.first], nodes[pair.second]
        w2 = numpy_helper.to_array(initializers[second.input[1]])
        s = equalisation_scales(ranges[pair.activation], w2, pair.depthwise, max_gain)
        per_out = s.reshape(-1, 1, 1, 1)
        _replace(initializers[first.input[1]], numpy_helper.to_array(initializers[first.input[1]]) / per_out)
        if len(first.input) > 2 and first.input[2]:
            _replace(initializers[first.input[2]], numpy_helper.to_array(initializers[first.input[2]]) / s)
        _replace(initializers[second.input[1]], w2 * (per_out if pair.depthwise else s.reshape(1, -1, 1, 1)))
        gains.append(1.0 / s)
    onnx.save(model, str(out_path))
    all_gains = np.concatenate(gains) if gains else np.ones(1)
    return EqualisationSummary(len(pairs), int(sum(g.size for g in gains)), float(np.median(all_gains)),
                               float(all_gains.max()))


def _replace(initializer: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
    initializer.CopyFrom(numpy_helper.from_array(value.astype(dtype), initializer.name))
