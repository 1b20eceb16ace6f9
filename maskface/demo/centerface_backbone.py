"""CenterFace's face-trained MobileNetV2 trunk as a torchvision `mobilenet_v2` state_dict.

CenterFace's ONNX graph holds torchvision's MobileNetV2 blocks 0-17 with every BatchNorm folded
into its conv (weights + bias), ReLU instead of ReLU6, and RGB input in 0..255. The 52 convs
of blocks 0-17 appear in the graph in the same order as in torchvision, so they map one to one
(each shape is checked). Each folded bias becomes a FrozenBatchNorm2d with unit scale:
weight 1, running_mean 0, running_var 1 - eps, bias = the conv bias.

Our model takes ImageNet-normalised RGB, x = (raw - mean) / std, so the first conv absorbs the
normalisation: w' = w * std (per input channel) and b' = b + sum(w * mean). That is exact
everywhere except the one-pixel ring where the first conv reads zero padding (zero in
normalised space is `mean` in raw space, not 0).

Use it with the demo preset (activation="relu", mobilenet_last_conv=False):
`maskface train --config demo --backbone-weights <this file>`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FROZEN_BN_EPS = 1e-5  # torchvision.ops.misc.FrozenBatchNorm2d's default


def _conv_initialisers(onnx_path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    convs = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) < 3:
            raise ValueError(f"conv {node.name or node.output[0]} has no bias: is this CenterFace's folded graph?")
        convs.append((weights[node.input[1]], weights[node.input[2]]))
    return convs


def centerface_state_dict(onnx_path: str | Path, pixel_mean, pixel_std) -> dict[str, torch.Tensor]:
    """torchvision mobilenet_v2 `features.0`-`features.17` weights from CenterFace's graph."""
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    conv_names = [name for name, m in reference.features[:18].named_modules() if isinstance(m, torch.nn.Conv2d)]
    convs = _conv_initialisers(onnx_path)
    if len(convs) < len(conv_names):
        raise ValueError(f"{onnx_path}: {len(convs)} convs, expected at least {len(conv_names)}")
    state: dict[str, torch.Tensor] = {}
    modules = dict(reference.features.named_modules())
    for i, (name, (w, b)) in enumerate(zip(conv_names, convs)):
        conv = modules[name]
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ValueError(f"conv {i} ({name}): CenterFace has {w.shape}, torchvision expects "
                             f"{tuple(conv.weight.shape)}")
        w = w.astype(np.float64)
        b = b.astype(np.float64)
        if i == 0:  # fold the input normalisation into the first conv
            mean = np.asarray(pixel_mean, np.float64).reshape(1, 3, 1, 1)
            std = np.asarray(pixel_std, np.float64).reshape(1, 3, 1, 1)
            b = b + (w * mean).sum(axis=(1, 2, 3))
            w = w * std
        # torchvision names: conv "X.Y" is followed by its BatchNorm "X.(Y+1)".
        parent, index = name.rsplit(".", 1)
        bn = f"{parent}.{int(index) + 1}"
        n = w.shape[0]
        state[f"features.{name}.weight"] = torch.from_numpy(w.astype(np.float32))
        state[f"features.{bn}.weight"] = torch.ones(n)
        state[f"features.{bn}.bias"] = torch.from_numpy(b.astype(np.float32))
        state[f"features.{bn}.running_mean"] = torch.zeros(n)
        state[f"features.{bn}.running_var"] = torch.full((n,), 1.0 - FROZEN_BN_EPS)
    return state


def write_centerface_backbone(onnx_path: str | Path, out: str | Path, pixel_mean, pixel_std) -> Path:
    from ..checkpoint import atomic_torch_save

    out = Path(out)
    atomic_torch_save(centerface_state_dict(onnx_path, pixel_mean, pixel_std), out)
    return out
