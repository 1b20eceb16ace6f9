"""The training recipe: schedule, data order, exact resume, DDP (gloo, 2 processes), overfitting.

The model is the mbv2 preset with narrow FPN / context / keypoint widths (TINY) on 64x64
synthetic images, so that every run is a few seconds to a minute on 2 CPU cores.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from maskface.checkpoint import load_model, read_checkpoint
from maskface.cli import build_parser
from maskface.config import get_config
from maskface.data import synthetic
from maskface.engine.train_cli import options_from_args
from maskface.engine.trainer import (
    SMOKE_MODEL_OVERRIDES,
    TrainBatchSampler,
    TrainOptions,
    WarmupPlateauLR,
    apply_overrides,
    rng_state,
    set_rng_state,
    train,
)

REPO = Path(__file__).resolve().parents[2]
TINY = SMOKE_MODEL_OVERRIDES
TINY_SET = [f"{section}.{k}={v}" for section, fields in TINY.items() for k, v in fields.items()]


@pytest.fixture(scope="module")
def faces_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_faces")
    synthetic.write_widerface(root, splits=("train",), num_images=4, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=11)
    return root


def tiny_options(root, out, **kw) -> TrainOptions:
    base = dict(data=f"widerface:{root}", output_dir=str(out), config="mbv2", model_overrides=TINY, batch_size=2,
                warmup_iters=3, crop_size=64, scale_range=(0.8, 1.25), area_range=(16.0, 1e9), num_workers=0,
                progress=False, val_data="none", log_period=1, val_max_side=None)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def weights(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


# ------------------------------------------------------------------ units

def test_warmup_then_plateau_decay_with_floor():
    s = WarmupPlateauLR(base_lr=1e-2, warmup_iters=5000, warmup_start_lr=1e-4, min_lr=1e-4, decay=0.1, patience=2)
    assert s.lr(0) == pytest.approx(1e-4) and s.lr(2500) == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4))
    assert s.lr(5000) == pytest.approx(1e-2) and s.lr(90000) == pytest.approx(1e-2)
    assert s.report(0.5, 6000) and not s.report(0.5, 7000) and s.lr(7000) == pytest.approx(1e-2)
    assert not s.report(0.4, 8000) and s.lr(8000) == pytest.approx(1e-3)  # 2 evaluations without gain
    assert s.report(0.6, 9000)
    s.report(0.1, 10000)
    s.report(0.1, 10001)
    assert s.lr(20000) == pytest.approx(1e-4) and not s.finished  # floor reached, not below
    s.report(0.1, 30000)
    s.report(0.1, 30001)
    assert s.finished and s.lr(40000) == pytest.approx(1e-4) and s.num_decays == 2
    restored = WarmupPlateauLR(1e-2, 5000, 1e-4, 1e-4, 0.1, 2)
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    # no decay during the warm-up
    w = WarmupPlateauLR(1e-2, 100, 1e-4, 1e-4, 0.1, 1)
    w.report(0.5, 10)
    w.report(0.1, 20)
    assert w.num_decays == 0


def test_fixed_lr_steps_on_top_of_the_plateau_rule():
    s = WarmupPlateauLR(1e-2, 300, 1e-4, 1e-4, 0.1, patience=2, steps=(2600, 2100))
    assert s.lr(2099) == pytest.approx(1e-2) and s.lr(2100) == pytest.approx(1e-3)
    assert s.lr(2599) == pytest.approx(1e-3) and s.lr(2600) == pytest.approx(1e-4) and s.lr(9000) == pytest.approx(1e-4)
    assert s.report(0.9, 1200)
    assert not s.report(0.8, 1600) and not s.report(0.8, 2000) and s.num_decays == 1  # a plateau decay too
    assert s.lr(2000) == pytest.approx(1e-3) and s.lr(2100) == pytest.approx(1e-4)  # floored, not 1e-5
    s.report(0.1, 2700)
    s.report(0.1, 2800)
    assert s.finished  # at the floor (steps + plateau) and not improving


def test_batch_sampler_is_a_function_of_seed_iteration_and_rank():
    a = TrainBatchSampler(10, batch_size=2, seed=3, world_size=2, rank=0)
    b = TrainBatchSampler(10, batch_size=2, seed=3, world_size=2, rank=1)
    for it in range(6):  # ranks take disjoint halves of one global batch; epochs are permutations
        assert not set(a.batch(it)) & set(b.batch(it))
    epoch0 = [i for it in range(2) for i, _ in a.batch(it) + b.batch(it)]
    assert len(set(epoch0)) == 8 and a.batch(2)[0][1] == 1  # 2 iterations per epoch of 10 // 4
    resumed = iter(TrainBatchSampler(10, batch_size=2, seed=3, start_iter=4, world_size=2, rank=0))
    assert [next(resumed) for _ in range(3)] == [a.batch(i) for i in (4, 5, 6)]
    small = TrainBatchSampler(3, batch_size=4, seed=0)
    assert len(small.batch(0)) == 4  # tiled when the set is smaller than a batch


def test_overrides_and_rng_state_roundtrip(tmp_path):
    cfg = apply_overrides(get_config("mbv2"), {"fpn": {"channels": 64}, "keypoints.num_convs": 2})
    assert cfg.fpn.channels == 64 and cfg.keypoints.num_convs == 2
    with pytest.raises(ValueError, match="unknown config field 'fpn.nope'"):
        apply_overrides(get_config("mbv2"), {"fpn.nope": 1})
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "s.pth")
    loaded = torch.load(tmp_path / "s.pth", weights_only=True)["rng"]  # no pickled objects
    expect = (torch.rand(3), np.random.rand(2))
    set_rng_state(loaded)
    assert torch.equal(torch.rand(3), expect[0]) and np.array_equal(np.random.rand(2), expect[1])


def test_cli_parses_the_recipe_options():
    args = build_parser().parse_args(["train", "--config", "r50", "--data", "widerface:/d", "--batch-size", "16",
                                      "--backbone-weights", "/w.pth", "--set", "fpn.channels=64"])
    o = options_from_args(args)
    assert (o.config, o.data, o.batch_size, o.backbone_weights) == ("r50", "widerface:/d", 16, "/w.pth")
    assert (o.base_lr, o.warmup_start_lr, o.warmup_iters, o.min_lr) == (1e-2, 1e-4, 5000, 1e-4)
    assert (o.momentum, o.weight_decay) == (0.9, 1e-4) and o.model_overrides == {"fpn.channels": 64}
    assert args.func is not None


def test_landmark_sets_train_with_their_own_k(tmp_path, one_thread):
    root = tmp_path / "aflw"
    synthetic.write_aflw(root, splits=("train",), num_images=2, image_size=(64, 64), face_size=(28, 40))
    out = tmp_path / "aflw_run"
    result = train(tiny_options(root, out, data=f"aflw:{root}", max_iter=2, face_size_range=(24.0, 40.0),
                                max_rotation=30.0, checkpoint_period=2))
    assert result["iteration"] == 2 and np.isfinite(result["loss"])
    assert read_checkpoint(out / "model_final.pth")["config"]["keypoints"]["num_landmarks"] == 19


def test_backbone_weights_are_loaded_from_a_local_file(faces_root, tmp_path):
    from torchvision.models import mobilenet_v2

    state = mobilenet_v2(weights=None).state_dict()
    state["features.0.0.weight"] = torch.full_like(state["features.0.0.weight"], 0.125)
    torch.save(state, tmp_path / "imagenet.pth")
    out = tmp_path / "bw"
    train(tiny_options(faces_root, out, max_iter=0, backbone_weights=str(tmp_path / "imagenet.pth")))
    ckpt = read_checkpoint(out / "model_final.pth")
    stem = [v for k, v in ckpt["model"].items() if k.startswith("backbone.") and v.dim() == 4][0]
    assert torch.all(stem == 0.125) and ckpt["config"]["backbone"]["weights"] is None


# ------------------------------------------------------------------ resume

KILL_DRIVER = textwrap.dedent("""
    import json, os, signal, sys, torch
    torch.set_num_threads(1)
    from maskface.engine import trainer as T
    opts = T.TrainOptions(**json.loads(sys.argv[1]))
    kill_at = int(sys.argv[2])
    save = T.Trainer.save
    def save_then_die(self, name=T.LAST):
        path = save(self, name)
        if self.iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash right after the checkpoint
        return path
    T.Trainer.save = save_then_die
    T.train(opts)
""")


def test_resume_after_kill_matches_an_uninterrupted_run(faces_root, tmp_path, one_thread):
    n = 6
    common = dict(max_iter=n, checkpoint_period=n // 2)  # lr warm-up crosses the interruption
    train(tiny_options(faces_root, tmp_path / "straight", **common))

    killed = tmp_path / "killed"
    opts = tiny_options(faces_root, killed, **common).to_dict()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, json.dumps(opts), str(n // 2)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert read_checkpoint(killed / "last.pth")["iteration"] == n // 2 and not (killed / "model_final.pth").exists()

    result = train(tiny_options(faces_root, killed, **common))  # resumes from last.pth
    assert result["iteration"] == n
    a, b = weights(tmp_path / "straight" / "model_final.pth"), weights(killed / "model_final.pth")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    print(f"\nresume: max |w_straight - w_resumed| after {n} iterations = {diff:.3g}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-exact on CPU
    log = read_log(killed)
    assert [r["iter"] for r in log if r["type"] == "train"] == list(range(1, n + 1))
    straight_losses = [r["loss"] for r in read_log(tmp_path / "straight") if r["type"] == "train"]
    resumed_losses = [r["loss"] for r in log if r["type"] == "train"]
    assert resumed_losses == straight_losses


# ------------------------------------------------------------------ DDP

def test_torchrun_two_processes_gloo_keep_identical_weights(faces_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "maskface.cli", "train", "--config", "mbv2", "--data", f"widerface:{faces_root}",
           "--output", str(out), "--batch-size", "2", "--max-iter", "3", "--warmup-iters", "2",
           "--crop-size", "64", "--scale-range", "0.8", "1.25", "--area-range", "16", "1e9", "--workers", "0",
           "--val-data", "none", "--no-progress", "--log-period", "1", "--device", "cpu"]
    for item in TINY_SET:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = read_log(out)
    start, end = log[0], log[-1]
    assert start["world_size"] == 2 and end["type"] == "end" and end["iter"] == 3
    print(f"\nddp: max |w_rank1 - w_rank0| = {end['ddp_max_param_diff']}")
    assert end["ddp_max_param_diff"] == 0.0
    assert len([r for r in log if r["type"] == "train"]) == 3  # rank 0 logs once per iteration


# ------------------------------------------------------------------ overfitting

OVERFIT_NME_BOUND = 0.10  # mean landmark error below a tenth of the face size


def test_overfitting_a_tiny_set_finds_its_faces(faces_root, tmp_path, one_thread):
    from torchvision.ops import box_iou

    from maskface.data.widerface import WiderFaceDataset
    from maskface.modeling.maskface import MaskFace

    n = 80
    out = tmp_path / "overfit"
    result = train(tiny_options(faces_root, out, max_iter=n, batch_size=2, base_lr=0.02, warmup_iters=10,
                                scale_range=(1.0, 1.0), color=False, checkpoint_period=n,
                                val_data=f"widerface:{faces_root}", val_split="train", eval_period=n))
    # Detection losses only: the keypoint loss starts at 0 (no detection reaches the §3.2 proposal
    # score of 0.02 yet) and grows once proposals appear; its progress is the NME bound below.
    losses = [r["loss_cls"] + r["loss_box"] for r in read_log(out) if r["type"] == "train"]
    start, end = float(np.mean(losses[:3])), float(np.mean(losses[-5:]))
    kp = [r["loss_keypoint"] for r in read_log(out) if r["type"] == "train"]
    first_kp = next(i for i, v in enumerate(kp) if v > 0)
    print(f"\nkeypoint loss: 0 until iteration {first_kp + 1}, then {kp[first_kp]:.3f} -> {np.mean(kp[-5:]):.3f}")
    model = load_model(out / "model_final.pth")  # default inference settings: score >= 0.5
    torch.manual_seed(0)
    untrained = MaskFace(model.cfg).eval()  # the same architecture at its initialisation
    ds = WiderFaceDataset(faces_root, split="train")
    hits = faces = detections = 0
    nme, nme_untrained = [], []
    for i in range(len(ds)):
        image, target = ds[i]
        with torch.no_grad():
            det = model(image[None])[0]
        faces += len(target["boxes"])
        detections += len(det["boxes"])
        if len(det["boxes"]):
            iou, j = box_iou(target["boxes"], det["boxes"]).max(1)
            hits += int((iou >= 0.5).sum())
            gt_boxes = target["boxes"][iou >= 0.5]
            size = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])).sqrt()
            gt_points = target["landmarks"][iou >= 0.5]
            err = (det["landmarks"][j[iou >= 0.5]] - gt_points).norm(dim=-1).mean(-1)
            nme.extend((err / size).tolist())
            # the untrained head on the very same boxes
            rois = torch.cat([torch.zeros(len(gt_boxes), 1), det["boxes"][j[iou >= 0.5]]], dim=1)
            with torch.no_grad():
                points, _, _ = untrained.landmarks(untrained.context_features(image[None]), rois)
            nme_untrained.extend(((points - gt_points).norm(dim=-1).mean(-1) / size).tolist())
    recall = hits / faces
    ap = [r for r in read_log(out) if r["type"] == "val"][-1]["ap50"]
    print(f"overfit: detection loss {start:.3f} -> {end:.3f} in {n} iterations; recall@IoU0.5 {recall:.2f} "
          f"({hits}/{faces}, {detections} detections at score >= 0.5); AP50 {ap:.3f}; "
          f"landmark NME (error / face size) {np.mean(nme):.3f}, untrained head on the same boxes "
          f"{np.mean(nme_untrained):.3f}")
    assert end < 0.4 * start
    assert recall >= 0.9
    assert np.mean(nme) < OVERFIT_NME_BOUND < np.mean(nme_untrained)
    assert result["iteration"] == n


# ------------------------------------------------------------------ validation split and ranking

def test_holdout_indices_are_a_seeded_disjoint_share_of_train():
    from maskface.engine.trainer import holdout_indices

    a = holdout_indices(100, 0.05, seed=3)
    assert len(a) == 5 and len(set(a.tolist())) == 5 and a.min() >= 0 and a.max() < 100
    assert np.array_equal(a, holdout_indices(100, 0.05, seed=3))  # a function of the seed only
    assert not np.array_equal(a, holdout_indices(100, 0.05, seed=4))
    assert len(holdout_indices(3, 0.05, 0)) == 1 and len(holdout_indices(2, 0.9, 0)) == 1  # 1 <= k <= n - 1
    with pytest.raises(ValueError, match="fraction"):
        holdout_indices(10, 0.0, 0)
    with pytest.raises(ValueError, match="1 image"):
        holdout_indices(1, 0.5, 0)


def test_landmark_sets_rank_by_nme_and_wider_by_ap50():
    from maskface.engine.trainer import validation_score

    good_ap, good_nme = {"ap50": 0.9, "nme": 0.20}, {"ap50": 0.5, "nme": 0.05}
    for kind in ("aflw", "300w"):
        assert validation_score(kind, good_nme)[1] > validation_score(kind, good_ap)[1]
        assert validation_score(kind, good_nme) == ("nme", -0.05)
    assert validation_score("widerface", good_ap)[1] > validation_score("widerface", good_nme)[1]
    # --val-metric nme: a WIDER FACE run that trains only the keypoint head ranks by its landmarks.
    assert validation_score("widerface", good_nme, "nme") == ("nme", -0.05)
    assert validation_score("aflw", good_ap, "ap50") == ("ap50", 0.9)
    with pytest.raises(ValueError, match="auto, ap50 or nme"):
        validation_score("widerface", good_ap, "map")


def test_validation_nme_takes_the_most_confident_match_at_iou_04():
    from maskface.engine.trainer import UNMATCHED_NME, validation_nme

    pts = torch.tensor([[[30.0, 40.0], [70.0, 40.0]]])
    target = {"boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 0.0, 300.0, 100.0]]),
              "landmarks": torch.cat([pts, pts + torch.tensor([200.0, 0.0])]),
              "landmark_valid": torch.ones(2, 2, dtype=torch.bool)}
    # IoU 0.818 (score 0.6, off by (3, 4)) and IoU 0.333 (score 0.9, exact): the first counts. Face 2 unmatched.
    result = {"boxes": torch.tensor([[10.0, 0.0, 110.0, 100.0], [50.0, 0.0, 150.0, 100.0]]),
              "scores": torch.tensor([0.6, 0.9]), "landmarks": torch.cat([pts + torch.tensor([3.0, 4.0]), pts])}
    np.testing.assert_allclose(validation_nme(target, result, "box"), [5 / 100, UNMATCHED_NME])


def test_aflw_validation_is_held_out_of_train_and_best_follows_nme(tmp_path, one_thread):
    """No test split exists (and none is read): validation images come out of train; the val
    records rank by NME and best.pth is saved exactly when the NME improves."""
    from maskface.engine.trainer import Trainer

    root = tmp_path / "aflw"
    synthetic.write_aflw(root, splits=("train",), num_images=8, image_size=(64, 64), face_size=(28, 40))
    (root / "face_landmarks_aflw_test.csv").write_text("not,a,valid,csv\n")  # would fail if it were read
    out = tmp_path / "aflw_val"
    opts = tiny_options(root, out, data=f"aflw:{root}", val_data=None, max_iter=3, eval_period=1,
                        val_holdout_fraction=0.25, face_size_range=(24.0, 40.0), checkpoint_period=3)
    trainer = Trainer(opts)
    train_paths = {str(r.image_path) for r in trainer.train_set.records}
    val_paths = {str(r.image_path) for r in trainer.val_set.records}
    assert len(val_paths) == 2 and len(train_paths) == 6 and not train_paths & val_paths
    assert len(train_paths | val_paths) == 8
    trainer.train()
    vals = [r for r in read_log(out) if r["type"] == "val"]
    assert len(vals) == 3 and all(r["metric"] == "nme" and np.isfinite(r["nme"]) for r in vals)
    best = float("inf")
    for r in vals:
        assert r["improved"] == (r["nme"] < best)
        best = min(best, r["nme"])
        assert r["best"] == pytest.approx(-best)
    best_iter = [r["iter"] for r in vals if r["improved"]][-1]
    assert read_checkpoint(out / "best.pth")["iteration"] == best_iter


# ------------------------------------------------------------------ CLI and crash leftovers

def test_train_help_set_example_builds_a_model():
    """The --set example printed by `maskface train --help` is parsed and applied as given."""
    import shlex

    from maskface.engine import train_cli
    from maskface.engine.trainer import apply_overrides
    from maskface.config import get_config
    from maskface.modeling.maskface import MaskFace

    line = next(line for line in train_cli.__doc__.splitlines() if line.strip().startswith("--set"))
    tokens = shlex.split(line)
    items = [tokens[i + 1] for i, t in enumerate(tokens) if t == "--set"]
    assert len(items) >= 2
    cfg = get_config("r50")
    cfg.backbone.weights = None
    apply_overrides(cfg, train_cli._parse_set(items))
    model = MaskFace(cfg)
    assert cfg.fpn.channels == 64 and model is not None


def test_resume_removes_stale_temporaries_and_replayed_log_records(faces_root, tmp_path, one_thread):
    """A crash mid-checkpoint leaves `.last.pth.<random>.tmp` and log records of iterations after
    the last good checkpoint; the resumed run removes the first and writes each iteration once."""
    out = tmp_path / "run"
    train(tiny_options(faces_root, out, max_iter=2, checkpoint_period=2))
    stale = out / ".last.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = out / ".unrelated.tmp"
    other.write_bytes(b"not ours")
    with open(out / "log.jsonl", "a") as fh:  # the crashed run got to iteration 4 before dying mid-save
        for i in (3, 4):
            fh.write(json.dumps({"type": "train", "iter": i, "loss": 1.0}) + "\n")
        fh.write('{"type": "train", "it')  # a line cut short by the crash
    train(tiny_options(faces_root, out, max_iter=4, checkpoint_period=2))
    assert not stale.exists() and other.exists()
    log = read_log(out)
    assert [r["iter"] for r in log if r["type"] == "train"] == [1, 2, 3, 4]
    assert all(r.get("loss") != 1.0 for r in log if r["type"] == "train")  # the replayed ones, not the stale


def test_channels_last_trains_the_same_model(faces_root, tmp_path, one_thread):
    """--channels-last changes the memory layout only: after 3 SGD steps the weights agree with the
    NCHW run to float-rounding level, and the layout is really NHWC during training."""
    from maskface.engine.trainer import Trainer

    nchw = train(tiny_options(faces_root, tmp_path / "nchw", max_iter=3))
    trainer = Trainer(tiny_options(faces_root, tmp_path / "nhwc", max_iter=3, channels_last=True))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nhwc = trainer.train()
    assert nhwc["iteration"] == nchw["iteration"] == 3
    a, b = weights(tmp_path / "nchw" / "last.pth"), weights(tmp_path / "nhwc" / "last.pth")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, worst
