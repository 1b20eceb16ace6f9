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
    with torch.no_grad():
        losses = model(images, [face_target(k)])
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
    torch.manual_seed(0)
    model = build_model("mbv2").eval()  # focal-loss prior: every score starts near 0.01
    model.cfg.inference.score_threshold = 1.01
    with torch.no_grad():
        results = model(torch.randn(2, 3, 192, 256))
    for r in results:
        assert r["boxes"].shape == (0, 4) and r["scores"].shape == (0,)
        assert r["landmarks"].shape == (0, 5, 2) and r["landmark_scores"].shape == (0, 5)


def test_a_few_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("mbv2").train()
    model.cfg.keypoints.max_proposals_per_image = 4  # keep the CPU cost of the keypoint head low
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
