"""Backbones of Table 5 returning C2..C5 (strides 4, 8, 16, 32).

All BatchNorm layers are FrozenBatchNorm2d and the stem + first stage are frozen (§3.3): detection
batches are too small for batch statistics. ImageNet weights come from a local torchvision
state_dict only; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from ..config import BACKBONES, BackboneConfig


class ResNetBackbone(nn.Module):
    """ResNet / ResNeXt body: C2 = layer1 ... C5 = layer4."""

    def __init__(self, body: resnet.ResNet):
        super().__init__()
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.stages = nn.ModuleList([body.layer1, body.layer2, body.layer3, body.layer4])
        self.out_channels = [stage[-1].conv3.out_channels for stage in self.stages]

    def frozen_modules(self, stages: int = 1) -> list[nn.Module]:
        return [self.stem, *self.stages[:stages]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features split at strides 4, 8, 16, 32 (channels 24, 32, 96, 1280).

    Without the last 1x1 conv (`last_conv=False`) C5 is the 320-channel block 17.
    """

    # Indices into torchvision's `features` where each stride ends.
    _SPLITS = (4, 7, 14, 19)

    def __init__(self, body: nn.Module, last_conv: bool = True):
        super().__init__()
        features = body.features
        splits = self._SPLITS if last_conv else self._SPLITS[:-1] + (self._SPLITS[-1] - 1,)
        starts = (0,) + splits[:-1]
        self.stages = nn.ModuleList(
            [nn.Sequential(*features[a:b]) for a, b in zip(starts, splits)]
        )
        self.out_channels = [_last_out_channels(stage) for stage in self.stages]

    def frozen_modules(self, stages: int = 1) -> list[nn.Module]:
        # The stem (conv 0) is part of the first stage (inverted residuals up to stride 4).
        return list(self.stages[:max(1, stages)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


def _last_out_channels(module: nn.Module) -> int:
    channels = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
    assert channels is not None
    return channels


def _torchvision_body(name: str) -> nn.Module:
    norm = FrozenBatchNorm2d
    if name == "resnet50":
        return resnet.resnet50(weights=None, norm_layer=norm)
    if name == "resnext101_32x8d":
        return resnet.resnext101_32x8d(weights=None, norm_layer=norm)
    if name == "resnext152_32x8d":
        # torchvision has no preset for it; Table 5's ResNeXt-152 32x8d is [3, 8, 36, 3].
        return resnet.ResNet(resnet.Bottleneck, [3, 8, 36, 3], groups=32, width_per_group=8, norm_layer=norm)
    if name == "mobilenet_v2":
        return mobilenet_v2(weights=None, norm_layer=norm)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state_dict (torchvision naming) from a local file; the classifier is ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights {path} not found: pass the local path of a torchvision ImageNet "
            "state_dict (weights are never downloaded)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    missing, unexpected = body.load_state_dict(state, strict=False)
    # FrozenBatchNorm2d has no num_batches_tracked; the classifier was dropped on purpose.
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this backbone: missing {missing[:5]}..., unexpected {unexpected[:5]}... "
            "(is it the ImageNet state_dict of the same architecture?)"
        )


def _set_activation(body: nn.Module, activation: str, backbone: str) -> None:
    if activation == "relu6":
        return
    if activation != "relu" or backbone != "mobilenet_v2":
        raise ValueError(f"backbone activation {activation!r} is not available for {backbone} "
                         "(mobilenet_v2 takes relu6 or relu)")
    for name, module in list(body.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, nn.ReLU(inplace=True))


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    body = _torchvision_body(cfg.name)
    _set_activation(body, cfg.activation, cfg.name)
    if not cfg.mobilenet_last_conv:
        if cfg.name != "mobilenet_v2":
            raise ValueError("mobilenet_last_conv=False applies to the mobilenet_v2 backbone only")
        del body.features[18]  # its weights are neither loaded nor trained
    if cfg.weights:
        load_backbone_weights(body, cfg.weights)
    backbone = (MobileNetV2Backbone(body, cfg.mobilenet_last_conv) if cfg.name == "mobilenet_v2"
                else ResNetBackbone(body))
    if cfg.freeze_stem_and_first_stage:
        for module in backbone.frozen_modules(cfg.frozen_stages):
            for p in module.parameters():
                p.requires_grad_(False)
    return backbone


