import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from maskface import build_model, get_config
from maskface.config import PRESETS

SIZES = [(480, 640), (389, 517)]  # (H, W): the paper's 640x480 and an odd size


def face_target(num_landmarks: int, box: tuple[float, ...] = (60.0, 40.0, 220.0, 230.0)) -> dict[str, torch.Tensor]:
    box = torch.tensor([box])
    g = torch.Generator().manual_seed(1)
    points = box[:, None, :2] + torch.rand(1, num_landmarks, 2, generator=g) * (box[:, None, 2:] - box[:, None, :2])
    return {"boxes": box, "landmarks": points, "landmark_valid": torch.ones(1, num_landmarks, dtype=torch.bool)}


@pytest.fixture(scope="module", params=PRESETS)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
def test_forward_in_both_modes(model, size):
    images = torch.randn(1, 3, *size)
    model.eval()
    model.cfg.inference.score_threshold = 0.0  # keep candidates so the keypoint path runs
    model.cfg.inference.max_detections = 3
    with torch.no_grad():
        (result,) = model(images)
    k = model.num_landmarks
    assert result["boxes"].shape == (3, 4) and result["scores"].shape == (3,)
    assert result["landmarks"].shape == (3, k, 2) and result["landmark_scores"].shape == (3, k)
    assert torch.all(result["boxes"][:, 2] <= size[1]) and torch.all(result["boxes"][:, 3] <= size[0])
    model.train()
    model.cfg.keypoints.add_gt_as_proposals = True  # untrained: no detection reaches 0.02 (paper rule)
    with torch.no_grad():
        losses = model(images, [face_target(k)])
    model.cfg.keypoints.add_gt_as_proposals = False
    assert set(losses) == {"loss_cls", "loss_box", "loss_keypoint"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    model.cfg.inference = get_config().inference


def test_frozen_stem_first_stage_and_batchnorm():
    model = build_model("r50")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())
    assert all(not p.requires_grad for p in model.backbone.stages[0].parameters())
    assert all(p.requires_grad for p in model.backbone.stages[1].parameters())


@pytest.mark.parametrize("num_landmarks", [5, 19, 68])
def test_landmark_counts(num_landmarks):
    torch.manual_seed(0)
    model = build_model("mbv2", num_landmarks=num_landmarks).eval()
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 2
    with torch.no_grad():
        (result,) = model(torch.randn(1, 3, 128, 128))
    assert result["landmarks"].shape == (2, num_landmarks, 2)


def test_untrained_model_keeps_nothing_and_returns_empty_shapes():
    """At the default threshold (0.5) an untrained model keeps nothing because the focal-loss prior
    sets every score to about pi = 0.01 (bias -log((1 - pi) / pi)), not because of the threshold."""
    torch.manual_seed(0)
    model = build_model("mbv2").eval()
    assert model.cfg.inference.score_threshold == 0.5
    images = torch.randn(2, 3, 192, 256)
    with torch.no_grad():
        scores, _, _ = model.detect_candidates(images)
        results = model(images)
    print(f"\nuntrained candidate scores: min {scores.min():.4f}, max {scores.max():.4f}")
    assert 0.002 < scores.min() and scores.max() < 0.05  # near the 0.01 prior, far below 0.5
    for r in results:
        assert r["boxes"].shape == (0, 4) and r["scores"].shape == (0,)
        assert r["landmarks"].shape == (0, 5, 2) and r["landmark_scores"].shape == (0, 5)


def test_a_few_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("mbv2").train()
    model.cfg.keypoints.max_proposals_per_image = 4  # keep the CPU cost of the keypoint head low
    model.cfg.keypoints.add_gt_as_proposals = True  # so that the keypoint loss is defined from step 1
    images = torch.randn(1, 3, 128, 128)
    targets = [face_target(5, (30.0, 20.0, 100.0, 110.0))]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    totals = []
    for _ in range(6):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    print(f"\ntotal loss over 6 SGD steps: {[round(t, 3) for t in totals]}")
    assert totals[-1] < 0.75 * totals[0]


def test_missing_landmark_values_do_not_change_the_loss():
    torch.manual_seed(0)
    model = build_model("mbv2").train()
    model.cfg.keypoints.add_gt_as_proposals = True  # untrained: only ground-truth proposals
    images = torch.randn(1, 3, 128, 128)
    a = face_target(5, (30.0, 20.0, 100.0, 110.0))
    a["landmark_valid"][0, 3] = False
    b = {k: v.clone() for k, v in a.items()}
    a["landmarks"][0, 3] = torch.tensor([-1.0, -1.0])
    b["landmarks"][0, 3] = torch.tensor([100.0, 100.0])
    with torch.no_grad():
        la = model(images, [a])["loss_keypoint"]
        lb = model(images, [b])["loss_keypoint"]
    assert la.item() == lb.item() and la.item() > 0


def test_bad_inputs_raise_clear_errors():
    model = build_model("mbv2").train()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(torch.randn(2, 3, 64, 64), [face_target(5)])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.eval()(torch.randn(1, 64, 64))


# ---- §3.2 keypoint proposals -------------------------------------------------------------------

def crowded_proposal_case():
    """40 faces of 24x24 px on a grid. Candidates, best score first:
    - 20 unmatched boxes far from every face (the highest scores),
    - per face a box shifted 8 px left: IoU 16*24 / (2*576 - 16*24) = 0.5 (not > 0.6),
    - per face a box shifted 2 px right: IoU 22*24 / (2*576 - 22*24) = 528/624 = 0.846 (matched),
    - per face a near-copy of the matched box (shifted 3 px, IoU with it 0.92 > NMS 0.6, lower score),
    - per face an exact box with score 0.01 (< 0.02: never a proposal)."""
    gt = torch.tensor([[40.0 * c, 40.0 * r, 40.0 * c + 24, 40.0 * r + 24] for r in range(5) for c in range(8)])
    n = len(gt)
    shift = lambda d: gt + torch.tensor([d, 0.0, d, 0.0])  # noqa: E731
    junk = torch.tensor([[400.0 + 30 * i, 400.0, 424.0 + 30 * i, 424.0] for i in range(20)])
    boxes = torch.cat([junk, shift(-8.0), shift(2.0), shift(3.0), gt])
    scores = torch.cat([
        torch.linspace(0.99, 0.95, 20), torch.full((n,), 0.9),
        0.8 - 0.001 * torch.arange(n), torch.full((n,), 0.5), torch.full((n,), 0.01),
    ])
    target = {"boxes": gt, "landmarks": torch.zeros(n, 5, 2), "landmark_valid": torch.ones(n, 5, dtype=torch.bool)}
    return scores, boxes, target, shift(2.0)


def test_keypoint_proposals_filter_by_iou_before_the_cap_and_gt_never_crowds_them_out():
    torch.manual_seed(0)
    model = build_model("mbv2")
    kcfg = model.cfg.keypoints
    assert (kcfg.proposal_score_threshold, kcfg.proposal_nms_threshold, kcfg.proposal_iou_threshold) == (0.02, 0.6, 0.6)
    assert kcfg.max_proposals_per_image == 32 and kcfg.add_gt_as_proposals is False  # the paper's rule by default
    scores, boxes, target, matched = crowded_proposal_case()

    prop_boxes, gt_index = model._keypoint_proposals(scores, boxes, target)
    # The 32 best-scoring matched detections (faces 0..31), none of the 20 higher-scored junk boxes,
    # none of the IoU-0.5 boxes and no ground-truth box.
    assert torch.equal(prop_boxes, matched[:32]) and torch.equal(gt_index, torch.arange(32))

    # Option: ground-truth boxes join, beside the cap; the same 32 detections stay.
    model.cfg.keypoints.add_gt_as_proposals = True
    prop_boxes, gt_index = model._keypoint_proposals(scores, boxes, target)
    assert prop_boxes.shape == (40 + 32, 4)
    assert torch.equal(prop_boxes[:40], target["boxes"]) and torch.equal(gt_index[:40], torch.arange(40))
    assert torch.equal(prop_boxes[40:], matched[:32]) and torch.equal(gt_index[40:], torch.arange(32))

    # Faces without landmarks are never a proposal's ground truth.
    model.cfg.keypoints.add_gt_as_proposals = False
    target["landmark_valid"][:10] = False
    prop_boxes, gt_index = model._keypoint_proposals(scores, boxes, target)
    assert torch.equal(gt_index, torch.arange(10, 40)) and torch.equal(prop_boxes, matched[10:40])


def test_keypoint_proposals_untrained_detector_gives_none_without_the_gt_option():
    """The focal-loss prior puts every score near 0.01 < 0.02: no detection is a proposal yet."""
    torch.manual_seed(0)
    model = build_model("mbv2").train()
    images = torch.randn(1, 3, 128, 128)
    target = face_target(5, (30.0, 20.0, 100.0, 110.0))
    with torch.no_grad():
        assert model(images, [target])["loss_keypoint"].item() == 0.0
        model.cfg.keypoints.add_gt_as_proposals = True
        assert model(images, [target])["loss_keypoint"].item() > 0.0
