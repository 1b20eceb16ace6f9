"""Configuration of a MaskFace model: dataclasses with the paper's defaults, and named presets.

Every number of docs/ARCHITECTURE.md §3 is a field here. A config round-trips through plain dicts
(`to_dict` / `from_dict`) so that checkpoints can embed it and be loaded with weights_only=True.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("resnet50", "mobilenet_v2", "resnext101_32x8d", "resnext152_32x8d")


@dataclass
class BackboneConfig:
    name: str = "resnet50"
    # Stem + first stage are frozen, and every BatchNorm is a FrozenBatchNorm2d (§3.3).
    freeze_stem_and_first_stage: bool = True
    # How many stages (after the stem) stay frozen when freezing is on: 1 is the paper's. The demo
    # preset freezes 2: its face-trained trunk needs little change, and no backward pass through
    # the high-resolution blocks nearly halves the CPU cost of a training step.
    frozen_stages: int = 1
    # Optional local path of ImageNet weights (a torchvision state_dict). Never downloaded.
    weights: str | None = None
    # MobileNetV2 only. "relu6" is torchvision's; "relu" matches CenterFace's face-trained trunk
    # (maskface.demo.centerface_backbone), which also stops before the 1280-channel 1x1 conv
    # (mobilenet_last_conv=False: C5 has 320 channels).
    activation: str = "relu6"
    mobilenet_last_conv: bool = True


@dataclass
class FPNConfig:
    channels: int = 256
    gn_groups: int = 32


@dataclass
class ContextConfig:
    """Inception-like context module per pyramid level (Fig. 3), see modeling/context.py.

    branch1 = conv(in -> b1); trunk = conv(in -> t); branch2 = conv(trunk -> b2);
    trunk2 = conv(trunk -> t2); branch3 = conv(trunk2 -> b3); out = cat(b1, b2, b3).
    The widths are chosen so that the cost at 640x640 matches Table 1 (90 G multiply-adds with
    the backbone and FPN); tests/modeling/test_cost.py counts it.
    """

    enabled: bool = True
    branch1: int = 128
    trunk: int = 128
    branch2: int = 64
    trunk2: int = 192
    branch3: int = 64
    gn_groups: int = 32


@dataclass
class AnchorConfig:
    # Strides and base sizes of M2..M6; 3 square anchors per location (scales 2^0, 2^1/3, 2^2/3).
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    sizes: tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0)
    scales: tuple[float, ...] = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))


@dataclass
class MatcherConfig:
    positive_iou: float = 0.5
    negative_iou: float = 0.3
    allow_low_quality_matches: bool = True


@dataclass
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 1.0 / 9.0
    box_weight: float = 1.0
    keypoint_weight: float = 0.25  # lambda_kp
    # Box coder weights for (dx, dy, dw, dh).
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclass
class KeypointConfig:
    num_landmarks: int = 5
    # FPN level assignment, Eq. 6: k = floor(k0 + log2(sqrt(w*h) / canonical_size)).
    canonical_level: int = 3
    canonical_size: float = 224.0
    min_level: int = 2
    max_level: int = 6
    roi_size: int = 14
    sampling_ratio: int = 2  # 0 = adaptive, as torchvision / ONNX RoiAlign
    num_convs: int = 8
    conv_channels: int = 256
    gn_groups: int = 32
    heatmap_size: int = 56  # deconv x2 (28) then bilinear x2 (56)
    # Training proposals (§3.2): detections with score >= 0.02 after NMS 0.6, kept when their IoU
    # with a ground-truth face that has landmarks is > 0.6.
    proposal_score_threshold: float = 0.02
    proposal_nms_threshold: float = 0.6
    proposal_iou_threshold: float = 0.6
    # Not in the paper (options): the matched detections are capped per image to bound the
    # keypoint head's cost (about 1 G multiply-adds each), after the IoU filter; with
    # add_gt_as_proposals the ground-truth boxes join them (as in Mask R-CNN, so that the keypoint
    # loss is defined from the first iteration), outside the cap. Off by default, as in the paper.
    add_gt_as_proposals: bool = False
    max_proposals_per_image: int = 32


@dataclass
class InferenceConfig:
    score_threshold: float = 0.5
    # Candidates kept by the in-graph top-k: 3840 is TensorRT's TopK limit (NvInfer.h, export/export_onnx.py).
    pre_nms_topk: int = 3840
    nms_threshold: float = 0.4
    max_detections: int = 750


@dataclass
class InputConfig:
    # ImageNet statistics, RGB order, for images in 0..255. Normalisation happens in
    # preprocessing (maskface.preprocess), not in the graph.
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 64


@dataclass
class MaskFaceConfig:
    name: str = "r50"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MaskFaceConfig":
        return _from_dict(cls, data)

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that decide the shapes of the weights (used to refuse a wrong checkpoint)."""
        d = self.to_dict()
        return {
            "backbone": d["backbone"]["name"],
            "mobilenet_last_conv": d["backbone"]["mobilenet_last_conv"],
            "fpn": d["fpn"],
            "context": d["context"],
            "num_anchors": len(self.anchors.scales),
            "keypoints": {k: d["keypoints"][k] for k in ("num_landmarks", "num_convs", "conv_channels")},
        }


def _from_dict(cls, data: dict[str, Any]):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = _from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# WIDER FACE crops keep faces whose area (crop pixels) lies in this range: 0.4 x the smallest anchor
# (16 px) squared to 2.5 x 406 px (about the largest anchor, 406.4) squared (data/transforms.py, engine/train_options.py).
WIDER_AREA_RANGE = (0.4 * 16 ** 2, 2.5 * 406 ** 2)

_PRESET_BACKBONES = {
    "r50": "resnet50",
    "mbv2": "mobilenet_v2",
    "rx101": "resnext101_32x8d",
    "rx152": "resnext152_32x8d",
    "demo": "mobilenet_v2",
    "tiny": "mobilenet_v2",
}
PRESETS = tuple(_PRESET_BACKBONES)

# The `tiny` preset: MobileNetV2 with very narrow FPN / context / keypoint head, for smoke runs and
# tests on ~64-256 px synthetic images (not a model to deploy). Section -> fields.
TINY_MODEL_FIELDS: dict[str, dict[str, Any]] = {
    "fpn": {"channels": 32, "gn_groups": 8},
    "context": {"branch1": 16, "trunk": 16, "branch2": 8, "trunk2": 16, "branch3": 8, "gn_groups": 4},
    "keypoints": {"num_convs": 1, "conv_channels": 32, "gn_groups": 8, "max_proposals_per_image": 4},
}


def _demo_preset(cfg: MaskFaceConfig) -> None:
    """The demo model (maskface/demo/MODEL_CARD.md): the paper's mbv2 MaskFace, narrowed to train
    on a 2-core CPU in hours and to run at interactive speed there. Departures from the paper:
    CenterFace's MobileNetV2 trunk (ReLU, no 1280-channel conv), FPN and context modules at a
    quarter of the width, and a keypoint head of 8 convs x 64 channels instead of 8 x 256 (trained in
    a second stage on the finished detector; the first stage's head was 4 x 64, scripts/train_demo.sh)."""
    cfg.backbone.activation = "relu"
    cfg.backbone.mobilenet_last_conv = False
    cfg.backbone.frozen_stages = 2
    # Keypoint targets from the first iteration: the distilled detector needs a while before its
    # own detections pass the IoU > 0.6 rule (documented option, see KeypointConfig).
    cfg.keypoints.add_gt_as_proposals = True
    cfg.fpn = FPNConfig(channels=64, gn_groups=16)
    cfg.context = ContextConfig(branch1=32, trunk=32, branch2=16, trunk2=48, branch3=16, gn_groups=8)
    cfg.keypoints.num_convs = 8
    cfg.keypoints.conv_channels = 64
    cfg.keypoints.gn_groups = 16
    cfg.keypoints.max_proposals_per_image = 16


def get_config(name: str = "r50", num_landmarks: int = 5, **overrides: Any) -> MaskFaceConfig:
    """A preset (r50 default, mbv2, rx101, rx152, demo, tiny) with K landmarks.

    `overrides` sets top-level sections, e.g. ``inference=InferenceConfig(score_threshold=0.3)``.
    """
    if name not in _PRESET_BACKBONES:
        raise ValueError(f"unknown MaskFace preset {name!r}; choose one of {', '.join(PRESETS)}")
    if num_landmarks not in (5, 19, 68):
        # Other K work too, but need their own flip permutation; be loud about it.
        raise ValueError(f"num_landmarks must be 5 (WIDER FACE), 19 (AFLW) or 68 (300W), got {num_landmarks}")
    cfg = MaskFaceConfig(name=name, backbone=BackboneConfig(name=_PRESET_BACKBONES[name]))
    cfg.keypoints.num_landmarks = num_landmarks
    if name == "demo":
        _demo_preset(cfg)
    if name == "tiny":
        for section, fields in TINY_MODEL_FIELDS.items():
            for key, value in fields.items():
                setattr(getattr(cfg, section), key, value)
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown config section {key!r}")
        setattr(cfg, key, value)
    return cfg
