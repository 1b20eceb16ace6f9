"""Graphs shared by test_tensorrt_build.py and test_fp16.py (imported by both; not a pytest conftest).

The model is the seeded ``mbv2`` preset (tests/export/conftest.py's ``export_model``) with its
frozen BatchNorm statistics set from one seeded random batch. A freshly initialised backbone has no
BN statistics and its deep activations are ~1e-6, inside FP16's subnormal range, so FP16 numerics
on it say nothing about a trained network; with the statistics set, activations are O(1) as in a
trained backbone. Exported once per test process (about 12 s on 2 cores).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torchvision.ops.misc import FrozenBatchNorm2d

_CACHE: dict[str, dict[str, Path]] = {}


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, seed: int = 0, size: tuple[int, int] = (128, 128), batch: int = 2):
    """A copy of `model` whose FrozenBatchNorm2d running mean / var are the statistics of one seeded
    random batch, set layer by layer during one forward pass (each layer sees normalised inputs)."""
    model = copy.deepcopy(model).eval()

    def set_stats(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    generator = torch.Generator().manual_seed(seed)
    try:
        model.context_features(torch.randn(batch, 3, *size, generator=generator))
    finally:
        for h in hooks:
            h.remove()
    return model


def exported_graphs(tmp_path_factory, export_model) -> dict[str, Path]:
    """detector.onnx, keypoint_head.onnx (custom node), keypoint_head_portable.onnx of the calibrated
    model, plus "model" (the calibrated torch model); exported once per process."""
    if "graphs" not in _CACHE:
        from export.export_onnx import export_all

        model = calibrate_frozen_bn(export_model)
        paths = dict(export_all(model, tmp_path_factory.mktemp("trt_graphs")))
        paths["model"] = model
        _CACHE["graphs"] = paths
    return _CACHE["graphs"]
