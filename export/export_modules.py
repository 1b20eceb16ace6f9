"""The two exported graphs as torch modules wrapping a MaskFace model (docs/CONTRACTS.md).

Both call the model's own inference stages, so the graphs compute exactly what PyTorch does:
- DetectorGraph:     images [B, 3, H, W] -> scores [B, k], boxes [B, k, 4], m2..m6
- KeypointGraph:     m2..m6, rois [N, 5] -> landmarks [N, K, 2], landmark_scores [N, K] (+ heatmaps)

The keypoint graph's multi-level RoIAlign is either ONE custom node `maskface::MultiLevelRoIAlign`
(resolved by TensorRT to the plugin in plugins/) or, with `portable=True`, standard ONNX RoiAlign
nodes that ONNX Runtime runs. Everything after the pooler is the same in both, except that the
TensorRT graph pads one ROI (KeypointGraph.forward says why).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from maskface.modeling.maskface import MaskFace
from maskface.modeling.levels import assign_levels
from maskface.contracts import (  # noqa: F401  (re-exported: export_onnx and tests read them here too)
    DETECTOR_INPUTS, DETECTOR_OUTPUTS, FEATURE_NAMES, HEATMAP_OUTPUT, KEYPOINT_INPUTS, KEYPOINT_OUTPUTS,
    PLUGIN_NAMESPACE, PLUGIN_OP_NAME, PLUGIN_OP_VERSION, POOLED_NAME,
)
from maskface.postprocess import decode_heatmaps



class DetectorGraph(nn.Module):
    def __init__(self, model: MaskFace):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        scores, boxes, features = self.model.detect_candidates(images)
        return (scores, boxes, *features)


def portable_multilevel_roi_align(
    features: list[torch.Tensor], rois: torch.Tensor, output_size: int, sampling_ratio: int,
    canonical_level: int, canonical_size: float, min_level: int, max_level: int, strides: tuple[int, ...],
) -> torch.Tensor:
    """Each ROI pooled once, on its own level, with standard ops (issue 15):

    per level NonZero picks its ROIs, Gather takes them, RoiAlign pools them; ScatterND writes every
    level's result back at its ROIs' rows. N stays dynamic and N = 0 gives empty tensors throughout.
    (The former graph pooled every ROI on all five levels and masked: 5x the RoiAlign work.)
    """
    levels = assign_levels(rois[:, 1:], canonical_level, canonical_size, min_level, max_level)
    out = None
    for i, (feature, stride) in enumerate(zip(features, strides)):
        # NonZero on FP32, not BOOL: TensorRT's parser matrix lists NonZero for FP32 / FP16 only, and the
        # portable graph is kept TensorRT-conformant too (tests/export/test_conformance.py).
        index = torch.nonzero((levels == min_level + i).to(rois.dtype)).reshape(-1)
        pooled = roi_align(feature, rois.index_select(0, index), (output_size, output_size), 1.0 / stride,
                           sampling_ratio, aligned=True)
        if out is None:
            out = pooled.new_zeros((rois.shape[0], pooled.shape[1], output_size, output_size))
        out = out.index_put((index,), pooled)
    return out


class _MultiLevelRoIAlignOp(torch.autograd.Function):
    """Runs the portable computation in PyTorch; exports as one custom-domain node."""

    @staticmethod
    def forward(ctx, rois, m2, m3, m4, m5, m6, output_size, sampling_ratio, canonical_level, canonical_size,
                min_level, max_level, strides):
        return portable_multilevel_roi_align([m2, m3, m4, m5, m6], rois, output_size, sampling_ratio,
                                             canonical_level, canonical_size, min_level, max_level, strides)

    @staticmethod
    def symbolic(g, rois, m2, m3, m4, m5, m6, output_size, sampling_ratio, canonical_level, canonical_size,
                 min_level, max_level, strides):
        pooled = g.op(
            f"{PLUGIN_NAMESPACE}::{PLUGIN_OP_NAME}", m2, m3, m4, m5, m6, rois,
            output_size_i=output_size, sampling_ratio_i=sampling_ratio,
            canonical_level_i=canonical_level, canonical_size_f=float(canonical_size),
            min_level_i=min_level, max_level_i=max_level, aligned_i=1,
            spatial_scales_f=[1.0 / s for s in strides],
            # TensorRT's ONNX parser finds the plugin by op type + these string attributes.
            plugin_namespace_s=PLUGIN_NAMESPACE, plugin_version_s=str(PLUGIN_OP_VERSION),
        )
        # Declare the output [N, C, S, S] so the exporter knows the rank downstream.
        channels = m2.type().sizes()[1] if m2.type().sizes() else None
        pooled.setType(m2.type().with_sizes([None, channels, output_size, output_size]))
        return pooled


class MultiLevelPooler(nn.Module):
    """The multi-level RoIAlign of the keypoint graph, portable (standard ops) or one custom node."""

    def __init__(self, model: MaskFace, portable: bool):
        super().__init__()
        cfg = model.cfg.keypoints
        self.portable = portable
        self.attrs = (cfg.roi_size, cfg.sampling_ratio, cfg.canonical_level, float(cfg.canonical_size),
                      cfg.min_level, cfg.max_level, tuple(model.cfg.anchors.strides))

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        if self.portable:
            return portable_multilevel_roi_align(features, rois, *self.attrs)
        return _MultiLevelRoIAlignOp.apply(rois, *features, *self.attrs)


class KeypointGraph(nn.Module):
    def __init__(self, model: MaskFace, portable: bool, heatmaps: bool = False):
        super().__init__()
        self.pooler = MultiLevelPooler(model, portable)
        self.keypoint_head = model.keypoint_head
        self.with_heatmaps = heatmaps

    def forward(self, m2, m3, m4, m5, m6, rois):
        num_rois = rois.shape[0]
        if not self.pooler.portable:
            # The TensorRT graph keeps one padding ROI (sliced off at the end) so that the plugin and
            # every layer after it never see an empty batch: N = 0 through the custom node could not
            # be verified without TensorRT. The portable graph needs none: its pooler is empty-safe
            # and export/batch_safe.py lets the Reshapes (GroupNorm, heatmap decoding) take N = 0.
            rois = torch.cat([rois, rois.new_tensor([[0.0, 0.0, 0.0, 16.0, 16.0]])])
        pooled = self.pooler([m2, m3, m4, m5, m6], rois)
        heatmaps = self.keypoint_head(pooled)
        landmarks, scores = decode_heatmaps(heatmaps, rois[:, 1:])
        outputs = (landmarks, scores, heatmaps) if self.with_heatmaps else (landmarks, scores)
        if self.pooler.portable:
            return outputs
        return tuple(o[:num_rois] for o in outputs)
