"""The PyTorch model in BF16 on a CPU with native BF16 (AVX512-BF16 / AMX) as a pipeline runtime.

Why PyTorch: ONNX Runtime's CPU provider has no BF16 convolutions, and OpenVINO (whose BF16 was
only slightly faster here) would be a ~100 MB dependency. The trunk (backbone, FPN, context modules)
and the keypoint head's conv tower run under torch.autocast("cpu", bfloat16) in channels-last
memory, on a copy of the model whose FrozenBatchNorm layers are folded into the preceding convs
(exact in FP32 up to rounding, 8.6e-6 on M2..M6). Without the fold every FrozenBatchNorm turns the
BF16 activation back into FP32 (its scale is an FP32 tensor), and BF16 was *slower* than FP32 eager
(measured 0.69x of FP32 unfolded vs 0.52x folded, detector graph, 640x480, interleaved, trainer
competing for the 2 cores).

What stays FP32, and why:

* Score sigmoid, top-k, anchor + box decoding and clipping (maskface.postprocess.top_candidates),
  on head outputs cast to float32. BF16 has 8 mantissa bits: a 640 px coordinate is rounded to a
  step of 4 px (2 px error); tests/test_bf16_runtime.py shows that BF16 decoding misplaces boxes
  by several pixels.
* RoIAlign (its sampling positions are coordinates) and heatmap decoding into landmarks (argmax,
  parabola fit on logit differences, scaling into the RoI) on float32 heatmaps.
* The M2..M6 maps handed between the stages are float32 (docs/CONTRACTS.md), so a BF16 detect
  stage can feed any keypoint stage.
* By measurement (Bf16Policy's defaults; numbers in its docstring): the detection head's 1x1 convs
  and the keypoint head's final deconv + upsampling.

Support is detected, never assumed (cpu_bf16_support): on Linux the CPU's flags (/proc/cpuinfo
avx512_bf16 or amx_bf16) and torch's oneDNN check. torch's check alone is not enough: it also says
yes on AVX-512 CPUs without BF16 instructions, where oneDNN emulates BF16 (slower than FP32).
"""
from __future__ import annotations

import copy
import platform
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import InferenceConfig
from ..modeling.maskface import MaskFace
from ..pipeline import select_candidates
from ..postprocess import decode_heatmaps, top_candidates
from ..engine.predictor import ModelPipeline
from .cpu_features import NATIVE_BF16_FLAGS, cpuinfo_bf16_flags, read_cpuinfo


class Bf16UnsupportedError(RuntimeError):
    """BF16 inference asked for on a CPU without native BF16."""


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    cpu_flags: tuple[str, ...]  # the NATIVE_BF16_FLAGS this CPU reports (empty when unknown)
    torch_bf16: bool | None  # torch.ops.mkldnn._is_mkldnn_bf16_supported(); None when torch lacks it
    reason: str


def torch_mkldnn_bf16() -> bool | None:
    """torch's own answer: oneDNN present and its BF16 path usable (None when this torch cannot say)."""
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is None:
        return None
    try:
        return bool(check())
    except RuntimeError:
        return None


def cpu_bf16_support(cpuinfo_text: str | None = None,
                     torch_check: Callable[[], bool | None] = torch_mkldnn_bf16) -> Bf16Support:
    """Whether this CPU runs BF16 natively. `cpuinfo_text` defaults to /proc/cpuinfo (Linux)."""
    torch_bf16 = torch_check()
    if cpuinfo_text is None:
        cpuinfo_text = read_cpuinfo()
    if torch_bf16 is False:
        return Bf16Support(False, (), False, "this torch build has no usable oneDNN BF16 path")
    if cpuinfo_text is None:
        # No flags to read (macOS, Windows): only torch's check, which cannot tell native from emulated.
        native = torch_bf16 is True and platform.machine().lower() in ("arm64", "aarch64")
        reason = ("no /proc/cpuinfo to read the CPU's BF16 flags from; "
                  + ("torch reports BF16 on an ARM CPU" if native else "not assuming native BF16"))
        return Bf16Support(native, (), torch_bf16, reason)
    flags = cpuinfo_bf16_flags(cpuinfo_text)
    if not flags:
        return Bf16Support(False, (), torch_bf16,
                           f"the CPU reports none of {', '.join(NATIVE_BF16_FLAGS)} (BF16 would be emulated, "
                           "slower than FP32)")
    torch_says = "torch's oneDNN BF16 check passes" if torch_bf16 else "torch cannot check its oneDNN BF16 path"
    return Bf16Support(True, flags, torch_bf16, f"the CPU reports {', '.join(flags)}; {torch_says}")


def require_cpu_bf16(support: Bf16Support | None = None) -> Bf16Support:
    """The support record, or Bf16UnsupportedError saying why not and what to use instead."""
    support = support or cpu_bf16_support()
    if not support.native:
        raise Bf16UnsupportedError(
            f"BF16 inference needs a CPU with native BF16 (AVX512-BF16 or AMX): {support.reason}. "
            "Use FP32 (the default PyTorch or ONNX Runtime path) or the INT8 ONNX Runtime graph instead.")
    return support


@dataclass(frozen=True)
class Bf16Policy:
    """Which parts besides the always-FP32 decoding run in FP32 (chosen by measurement).

    Measured with the demo model (iteration 800) on 42 photos (astronaut, Grace Hopper, 40 demo
    train-split images; 173 FP32 faces at score >= 0.5, all found by every variant), BF16 vs FP32
    PyTorch on the same inputs, |difference| of matched box corners and of landmarks (landmarks
    on the FP32 boxes, so only the keypoint stage differs):

    ==========================  ================================  ===============================
    variant                     box px: mean / p99 / max          landmark px: mean / p99 / max
    ==========================  ================================  ===============================
    no FP32 islands             0.243 / 3.79 / 25.8               0.109 / 1.06 / 2.79
    detection head FP32         0.152 / 1.44 / 13.9               0.109 / 1.06 / 2.79
    keypoint deconv FP32        0.243 / 3.79 / 25.8               0.053 / 0.46 / 2.37
    both (the default)          0.152 / 1.44 / 13.9               0.053 / 0.46 / 2.37
    ==========================  ================================  ===============================

    (Decoding boxes in BF16 on top of the default: mean 0.658, p99 2.77 px.) Each island halves or
    better the p99 error of what it feeds. Time (2 threads, interleaved, 8 repeats, loaded machine):
    the head island did not change detect time beyond the noise (0.92-0.96x); the deconv island
    made the keypoint stage 1.3-1.5x slower for 18 RoIs (~0.1 s of a ~2 s pipeline). Keeping more
    in FP32 did not help: on 40 demo train images, pipeline box drift p99 1.85 px as here, 2.31 px
    with FPN + context modules in FP32 too, 6.87 px with the context modules alone (the drift left
    is a different candidate winning NMS, not a box moving).
    """

    detection_head_fp32: bool = True
    keypoint_deconv_fp32: bool = True


class _Fp32Island(nn.Module):
    """Runs its module in FP32 inside an autocast region: tensor inputs (also in lists) are cast
    to float32 and autocast is off, so the outputs are float32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            if isinstance(x, (list, tuple)):
                return self.inner([t.float() for t in x])
            return self.inner(x.float())


def fold_frozen_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` whose (Conv2d, FrozenBatchNorm2d) pairs are one Conv2d with a bias.

    Pairs are found in Sequentials (MobileNetV2's Conv2dNormActivation, ResNet stems and
    downsamples) and as convN / bnN attributes (ResNet bottlenecks). Folding is computed in float64.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = copy.deepcopy(model)

    def fold(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
        scale = bn.weight.double() * (bn.running_var.double() + bn.eps).rsqrt()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight = nn.Parameter((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).float(), requires_grad=False)
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + bn.bias.double()).float(),
                                 requires_grad=False)

    for module in list(model.modules()):
        children = module._modules
        names = list(children)
        pairs = list(zip(names, names[1:])) if isinstance(module, nn.Sequential) else [
            (n, "bn" + n[4:]) for n in names if n.startswith("conv") and "bn" + n[4:] in children]
        for conv_name, bn_name in pairs:
            conv, bn = children[conv_name], children[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                fold(conv, bn)
                children[bn_name] = nn.Identity()
    return model


def bf16_model(model: MaskFace, policy: Bf16Policy) -> MaskFace:
    """The runtime's copy: BatchNorm folded, channels-last, FP32 islands per `policy`, eval mode."""
    prepared = fold_frozen_batchnorm(model.cpu().eval())
    if policy.detection_head_fp32:
        prepared.detection_head = _Fp32Island(prepared.detection_head)
    if policy.keypoint_deconv_fp32:
        prepared.keypoint_head.deconv = _Fp32Island(prepared.keypoint_head.deconv)
    return prepared.to(memory_format=torch.channels_last).eval()


class Bf16Runtime:
    """detect / select / keypoints (maskface.pipeline.Runtime) with the model's convolutions in BF16.

    Outputs are float32 torch tensors, like TorchRuntime's. Raises Bf16UnsupportedError on a CPU
    without native BF16 unless `require_native=False` (tests: emulated BF16 gives the same numbers).
    """

    def __init__(self, model: MaskFace, policy: Bf16Policy | None = None, require_native: bool = True):
        self.support = require_cpu_bf16() if require_native else cpu_bf16_support()
        self.policy = policy or Bf16Policy()
        self.model = bf16_model(model, self.policy)

    @property
    def num_landmarks(self) -> int:
        return self.model.num_landmarks

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)

    @torch.no_grad()
    def detect(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model = self.model
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            maps = model.context_features(x)
            logits, deltas = model.detection_head(maps)
        # Everything after the convolutions is FP32 (the module docstring says why).
        features = [m.float().contiguous() for m in maps]
        return (*top_candidates(logits.float(), deltas.float(), model.anchors(features), model.box_coder,
                                model.cfg.inference.pre_nms_topk, x.shape[-2:]), features)

    def select(self, scores: torch.Tensor, boxes: torch.Tensor, inference: InferenceConfig) -> torch.Tensor:
        return select_candidates(scores, boxes, inference)

    @torch.no_grad()
    def keypoints(self, features: Sequence[torch.Tensor], rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        features = [torch.as_tensor(f).float() for f in features]
        rois = torch.as_tensor(rois).float().reshape(-1, 5)
        pooled = model.roi_align(features, rois)
        with self._autocast():
            heatmaps = model.keypoint_head(pooled.contiguous(memory_format=torch.channels_last))
        points, scores = decode_heatmaps(heatmaps.float().contiguous(), rois[:, 1:])
        return points, scores


class Bf16Predictor(ModelPipeline):
    """The pipeline on a Bf16Runtime; the same contract as maskface.engine.predictor.Predictor
    (thresholds read from model.cfg.inference at each call)."""

    def __init__(self, model: MaskFace, max_side: int | None = 640, min_side: int | None = None,
                 policy: Bf16Policy | None = None, require_native: bool = True):
        runtime = Bf16Runtime(model, policy, require_native)
        super().__init__(runtime, model.cfg.inference, model.cfg.input, max_side, min_side)
        self.model = model
