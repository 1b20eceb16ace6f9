"""The MaskFace meta-architecture: owns labelling, losses and inference; the parts only compute.

Inference is split into the same three stages as the deployed pipeline (docs/CONTRACTS.md):
`detect_candidates` (= detector.onnx), `select_detections` (= the NMS step) and `landmarks`
(= keypoint_head.onnx), so that export and serving run exactly this code.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_iou

from ..box_ops import BoxCoder
from ..config import MaskFaceConfig
from ..losses import heatmap_targets, keypoint_loss_sum, sigmoid_focal_loss_sum, smooth_l1_sum
from ..matcher import IGNORE, Matcher
from ..postprocess import decode_heatmaps, select_detections, top_candidates
from .anchors import AnchorGenerator
from .backbone import build_backbone
from .context import ContextModule
from .fpn import FPN
from .heads import DetectionHead, KeypointHead
from .poolers import MultiLevelRoIAlign

Targets = list[dict[str, torch.Tensor]]


class MaskFace(nn.Module):
    def __init__(self, cfg: MaskFaceConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn.channels, cfg.fpn.gn_groups)
        ch = cfg.fpn.channels
        num_levels = len(cfg.anchors.strides)
        self.context = nn.ModuleList(
            [ContextModule(ch, cfg.context) if cfg.context.enabled else nn.Identity() for _ in range(num_levels)]
        )
        self.anchor_generator = AnchorGenerator(cfg.anchors)
        self.detection_head = DetectionHead(ch, self.anchor_generator.num_anchors_per_location)
        self.roi_align = MultiLevelRoIAlign(cfg.anchors.strides, cfg.keypoints)
        self.keypoint_head = KeypointHead(ch, cfg.keypoints)
        self.box_coder = BoxCoder(cfg.loss.box_coder_weights)
        self.matcher = Matcher(cfg.matcher.positive_iou, cfg.matcher.negative_iou, cfg.matcher.allow_low_quality_matches)

    @property
    def num_landmarks(self) -> int:
        return self.cfg.keypoints.num_landmarks

    # ---- shared trunk -------------------------------------------------------------------------
    def context_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """M2..M6: backbone -> FPN P2..P6 -> per-level context module."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a float tensor [B, 3, H, W], got shape {tuple(images.shape)}")
        pyramid = self.fpn(self.backbone(images))
        return [module(p) for module, p in zip(self.context, pyramid)]

    def anchors(self, features: list[torch.Tensor]) -> torch.Tensor:
        sizes = [tuple(f.shape[-2:]) for f in features]
        return torch.cat(self.anchor_generator(sizes, features[0].device), dim=0)

    # ---- the three inference stages ------------------------------------------------------------
    def detect_candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Top-k candidate scores [B, k], boxes [B, k, 4] (input pixels) and M2..M6."""
        features = self.context_features(images)
        logits, deltas = self.detection_head(features)
        scores, boxes = top_candidates(
            logits, deltas, self.anchors(features), self.box_coder,
            self.cfg.inference.pre_nms_topk, images.shape[-2:],
        )
        return scores, boxes, features

    def select_detections(self, scores: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The pipeline's selection rule (maskface.pipeline.select_candidates) with cfg.inference."""
        from ..pipeline import select_candidates

        return select_candidates(scores, boxes, self.cfg.inference)

    def landmarks(self, features: list[torch.Tensor], rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Landmarks [N, K, 2], scores [N, K] and heatmap logits [N, K, 56, 56] for rois [N, 5]."""
        heatmaps = self.keypoint_head(self.roi_align(features, rois))
        points, scores = decode_heatmaps(heatmaps, rois[:, 1:])
        return points, scores, heatmaps

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: Targets | None = None):
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError("in train mode, model(images, targets) needs one target dict per image")
            return self.losses(images, targets)
        return self.inference(images)

    @torch.no_grad()
    def inference(self, images: torch.Tensor, with_landmarks: bool = True) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes, scores, landmarks, landmark_scores. `with_landmarks=False` skips the
        keypoint head (landmarks [N, 0, 2]): box-only evaluation of many raw detections."""
        scores, boxes, features = self.detect_candidates(images)
        kept = [self.select_detections(s, b) for s, b in zip(scores, boxes)]
        rois = torch.cat(
            [torch.cat([boxes.new_full((len(k), 1), i), boxes[i, k]], dim=1) for i, k in enumerate(kept)]
        )
        if with_landmarks:
            points, point_scores, _ = self.landmarks(features, rois)
        else:
            points, point_scores = rois.new_zeros((len(rois), 0, 2)), rois.new_zeros((len(rois), 0))
        results, start = [], 0
        for i, k in enumerate(kept):
            end = start + len(k)
            results.append({
                "boxes": boxes[i, k], "scores": scores[i, k],
                "landmarks": points[start:end], "landmark_scores": point_scores[start:end],
            })
            start = end
        return results

    # ---- training ------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        """{"loss_cls", "loss_box", "loss_keypoint"}: focal / N_pos, smooth-L1 / N_pos and
        lambda_kp * spatial cross-entropy / (K * N_kp). Their sum is the total loss of §3.1."""
        features = self.context_features(images)
        logits, deltas = self.detection_head(features)
        anchors = self.anchors(features)
        cfg = self.cfg.loss

        labels, box_targets, positive = [], [], []
        for target in targets:
            gt = target["boxes"].to(anchors)
            matches = self.matcher(gt, anchors)
            label = (matches >= 0).to(logits.dtype)
            label[matches == IGNORE] = -1.0
            labels.append(label)
            pos = matches >= 0
            positive.append(pos)
            box_targets.append(self.box_coder.encode(anchors[pos], gt[matches[pos]]))
        labels_t = torch.stack(labels)
        positive_t = torch.stack(positive)
        num_pos = max(float(positive_t.sum()), 1.0)
        valid = labels_t >= 0
        loss_cls = sigmoid_focal_loss_sum(logits[valid], labels_t[valid], cfg.focal_alpha, cfg.focal_gamma) / num_pos
        loss_box = smooth_l1_sum(deltas[positive_t], torch.cat(box_targets), cfg.smooth_l1_beta) / num_pos

        loss_kp = self._keypoint_loss(features, logits.detach(), deltas.detach(), anchors, images.shape[-2:], targets)
        return {
            "loss_cls": loss_cls,
            "loss_box": cfg.box_weight * loss_box,
            "loss_keypoint": cfg.keypoint_weight * loss_kp,
        }

    def _keypoint_loss(self, features, logits, deltas, anchors, image_size, targets: Targets) -> torch.Tensor:
        kcfg = self.cfg.keypoints
        rois, gt_points, gt_valid = [], [], []
        with torch.no_grad():
            scores, boxes = top_candidates(logits, deltas, anchors, self.box_coder, self.cfg.inference.pre_nms_topk, image_size)
            for i, target in enumerate(targets):
                proposals = self._keypoint_proposals(scores[i], boxes[i], target)
                if proposals is None:
                    continue
                prop_boxes, gt_index = proposals
                rois.append(torch.cat([prop_boxes.new_full((len(prop_boxes), 1), i), prop_boxes], dim=1))
                gt_points.append(target["landmarks"].to(prop_boxes)[gt_index])
                gt_valid.append(target["landmark_valid"].to(prop_boxes.device)[gt_index])
        if not rois:
            # Keep every parameter in the graph (DDP needs it) with a zero loss.
            return sum(p.sum() for p in self.keypoint_head.parameters()) * 0.0
        rois_t = torch.cat(rois)
        heatmaps = self.keypoint_head(self.roi_align(features, rois_t))
        index, valid = heatmap_targets(torch.cat(gt_points), torch.cat(gt_valid), rois_t[:, 1:], kcfg.heatmap_size)
        return keypoint_loss_sum(heatmaps, index, valid) / (kcfg.num_landmarks * rois_t.shape[0])

    def _keypoint_proposals(self, scores, boxes, target) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Proposal boxes and the index of their ground truth (§3.2).

        The paper's rule: detections with score >= 0.02 after NMS at 0.6 whose IoU with a
        ground-truth face (one with landmarks) is > 0.6. The IoU filter runs on every such
        detection; only then are the matched detections capped at `max_proposals_per_image`
        (highest scores first). With `add_gt_as_proposals` (not in the paper, off by default) the
        ground-truth boxes are added *beside* that cap, so they never take a detection's slot.
        Returns ground-truth proposals first, then the detections.
        """
        kcfg = self.cfg.keypoints
        gt_boxes = target["boxes"].to(boxes)
        has_landmarks = target["landmark_valid"].any(dim=1) if "landmark_valid" in target else torch.zeros(
            len(gt_boxes), dtype=torch.bool, device=boxes.device)
        if gt_boxes.numel() == 0 or not bool(has_landmarks.any()):
            return None
        # No cap here: capping before the IoU filter would let unmatched detections take the slots.
        keep = select_detections(scores, boxes, kcfg.proposal_score_threshold, kcfg.proposal_nms_threshold,
                                 scores.shape[0])
        detections = boxes[keep]
        iou = box_iou(detections, gt_boxes)
        iou[:, ~has_landmarks] = -1.0
        best_iou, gt_index = iou.max(dim=1)
        matched = torch.nonzero(best_iou > kcfg.proposal_iou_threshold, as_tuple=True)[0]
        matched = matched[: kcfg.max_proposals_per_image]
        prop_boxes, prop_gt = detections[matched], gt_index[matched]
        if kcfg.add_gt_as_proposals:
            gt_with_landmarks = torch.nonzero(has_landmarks, as_tuple=True)[0]
            prop_boxes = torch.cat([gt_boxes[gt_with_landmarks], prop_boxes])
            prop_gt = torch.cat([gt_with_landmarks, prop_gt])
        if prop_boxes.numel() == 0:
            return None
        return prop_boxes, prop_gt

def build_model(
    name: str = "r50", num_landmarks: int = 5, config: MaskFaceConfig | None = None,
    backbone_weights: str | None = None,
) -> MaskFace:
    """A MaskFace model from a preset name (r50, mbv2, rx101, rx152) or an explicit config."""
    from ..config import get_config

    cfg = config if config is not None else get_config(name, num_landmarks)
    if backbone_weights is not None:
        cfg.backbone.weights = str(backbone_weights)
    return MaskFace(cfg)


__all__ = ["MaskFace", "build_model"]
