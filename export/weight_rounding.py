"""INT8 weight rounding that compensates its own error on the conv's inputs (issue 15).

Round-to-nearest quantises each weight alone. A conv's output error from rounding is (W_q - W) x, and
its mean square over the data is, per output channel c, (w_q - w)_c^T H (w_q - w)_c with H = E[x x^T]
the second moment of the conv's input patches (im2col columns). When inputs are correlated, the error
of one weight can be cancelled by nudging the weights not yet rounded. This is the column-by-column
procedure of GPTQ (Frantar et al. 2022, after Optimal Brain Quantization), written here for convs:

    H <- H + damp * mean(diag H) * I;   U = upper Cholesky factor of H^-1
    for column i:  q_i = quantise(w_i);  e = (w_i - q_i) / U_ii;  w_j -= e * U_ij for every j > i

with each output channel's own scale and zero point (those the quantiser chose from the weights'
range, unchanged), the columns in im2col order, and one H per conv group (a depthwise conv: one 9 x 9
H per channel). H is measured on the calibration images in the FP32 graph. A column whose input is
always zero has nothing to compensate and is rounded to nearest. Convs kept in FP32 are left alone.
Bias correction (export/bias_correction.py) runs afterwards on the new W_q.

Measured on the demo model: export/quantize_int8.py's module doc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from export.bias_correction import dequantize, quant_axis, quantised_convs
from export.equalize import conv_groups, probe_session

DAMP = 0.01  # of the mean diagonal, added to H's diagonal (keeps the inverse stable)


@dataclass
class RoundingSummary:
    convs: int  # convolutions whose INT8 weights were re-rounded
    error_ratio: float  # median over those of (output MSE after) / (output MSE of round-to-nearest), on H


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.s.decode() if a.s else a.i)
    return default


def conv_patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, int]) -> np.ndarray:
    """im2col of an [N, C, H, W] conv input under `node`'s strides, pads and dilations:
    [N * positions, C * kh * kw], columns in weight order (channel, kernel row, kernel column)."""
    import torch

    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise ValueError(f"{node.name}: auto_pad is not supported; export with explicit pads")
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    t = torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(x, np.float32)), (left, right, top, bottom))
    cols = torch.nn.functional.unfold(t, kernel, dilation=tuple(_attr(node, "dilations", [1, 1])),
                                      stride=tuple(_attr(node, "strides", [1, 1])))  # [N, C*kh*kw, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()


def input_moments(fp32: onnx.ModelProto, convs: Sequence[onnx.NodeProto], feeds: Sequence[dict]) -> dict[str, np.ndarray]:
    """conv name -> H [groups, d, d], d = C_in / groups * kh * kw: the mean of x x^T over every patch of
    every feed (each feed's mean, averaged over the feeds), x its im2col column within its group."""
    weights = {i.name: i for i in fp32.graph.initializer}
    session, tensors = probe_session(fp32, [c.input[0] for c in convs])
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(tensors, session.run(tensors, feed)))
        for conv in convs:
            kh, kw = weights[conv.input[1]].dims[2:]
            groups = conv_groups(conv)
            cols = conv_patches(values[conv.input[0]], conv, (kh, kw)).astype(np.float64)
            per_group = cols.reshape(cols.shape[0], groups, -1).transpose(1, 0, 2)  # [G, P, d]
            h = per_group.transpose(0, 2, 1) @ per_group / cols.shape[0]
            out[conv.name] = out.get(conv.name, 0.0) + h / len(feeds)
    return out


def compensated_rounding(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                         qmin: int, qmax: int, damp: float = DAMP) -> np.ndarray:
    """Integer weights [G, R, d] (R output channels per group) from float w [G, R, d], the group's input
    moments h [G, d, d] and per-row scale / zero point [G, R] (module doc)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    g, r, d = w.shape
    dead = np.diagonal(h, axis1=1, axis2=2) <= 0  # [G, d]
    gi, di = np.nonzero(dead)
    h[gi, di, di] = 1.0
    diag = np.diagonal(h, axis1=1, axis2=2)
    h[:, np.arange(d), np.arange(d)] += damp * diag.mean(axis=1, keepdims=True)
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # upper factor of H^-1
    q = np.zeros((g, r, d), np.int64)
    for i in range(d):
        q[:, :, i] = np.clip(np.round(w[:, :, i] / scale) + zero_point, qmin, qmax)
        err = (w[:, :, i] - (q[:, :, i] - zero_point) * scale) / u[:, i, i][:, None]
        w[:, :, i + 1:] -= err[:, :, None] * u[:, i, None, i + 1:]
    return q


def output_error(w_float: np.ndarray, w_quantised: np.ndarray, h: np.ndarray) -> float:
    """Mean square output error sum_c (w_q - w)_c^T H (w_q - w)_c of [G, R, d] weights under h [G, d, d]."""
    e = w_quantised - w_float
    return float(np.einsum("gri,gij,grj->", e, h, e))


def weight_range(dtype: np.dtype, zero_point: np.ndarray, reduce_range: bool = False) -> tuple[int, int]:
    """The integer range the quantiser used: symmetric INT8 (zero point 0) keeps -127..127, or -64..64 with
    reduce_range (ONNX Runtime's reduced INT8 range)."""
    info = np.iinfo(dtype)
    if info.min < 0 and not np.any(zero_point):
        return (-64, 64) if reduce_range else (-info.max, info.max)
    if reduce_range:
        raise ValueError("the reduced weight range is defined here for symmetric INT8 weights only")
    return int(info.min), int(info.max)


def round_weights(quantised: onnx.ModelProto, fp32: onnx.ModelProto, feeds: Sequence[dict],
                  reduce_range: bool = False) -> RoundingSummary:
    """Re-round, in place, the INT8 weights of every conv of `quantised` (a QDQ graph of `fp32`, same
    node names) whose weight is a per-output-channel dequantised initializer (module doc); reduce_range:
    the graph's weights were quantised to -64..64 and stay there."""
    graph = quantised.graph
    values = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    fp32_convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    fp32_values = {i.name: i for i in fp32.graph.initializer}
    work = []
    for conv, dq in quantised_convs(graph, fp32_convs, producer, values):
        if quant_axis(dq) != 0 or numpy_helper.to_array(values[dq.input[1]]).ndim != 1:
            continue  # one scale per output channel only
        work.append((conv, dq))
    if not work:
        return RoundingSummary(0, 1.0)
    moments = input_moments(fp32, [fp32_convs[c.name] for c, _ in work], feeds)
    ratios = []
    for conv, dq in work:
        stored = values[dq.input[0]]
        q_old = numpy_helper.to_array(stored)
        scale = numpy_helper.to_array(values[dq.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(values[dq.input[2]]) if len(dq.input) > 2 and dq.input[2]
              else np.zeros(scale.shape, q_old.dtype)).astype(np.int64)
        w = numpy_helper.to_array(fp32_values[fp32_convs[conv.name].input[1]]).astype(np.float64)
        groups = conv_groups(conv)
        c_out = w.shape[0]
        shape = (groups, c_out // groups, -1)
        h = moments[conv.name]
        qmin, qmax = weight_range(q_old.dtype, zp, reduce_range)
        q = compensated_rounding(w.reshape(shape), h, scale.reshape(shape[:2]), zp.reshape(shape[:2]), qmin, qmax)
        new = dequantize(q.reshape(w.shape), scale, zp, 0).reshape(shape)
        before = output_error(w.reshape(shape), dequantize(q_old, scale, zp, 0).reshape(shape), h)
        ratios.append(output_error(w.reshape(shape), new, h) / before if before > 0 else 1.0)
        stored.CopyFrom(numpy_helper.from_array(q.reshape(w.shape).astype(q_old.dtype), stored.name))
    return RoundingSummary(len(work), float(np.median(ratios)))
