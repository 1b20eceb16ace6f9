"""`maskface train --init-weights / --init-exclude / --train-only`: a new keypoint head on a trained
detector, trained alone, leaves every other weight bit-identical."""
import json

import pytest
import torch

from maskface.checkpoint import read_checkpoint
from maskface.engine.partial_training import init_from_checkpoint, train_only
from maskface.engine.trainer import SMOKE_MODEL_OVERRIDES, TrainOptions, apply_overrides, train
from maskface.config import get_config
from maskface.data import synthetic
from maskface.modeling.maskface import MaskFace


def tiny_model(seed: int, head_convs: int = 1) -> MaskFace:
    cfg = apply_overrides(get_config("mbv2"), SMOKE_MODEL_OVERRIDES)
    cfg.keypoints.num_convs = head_convs
    torch.manual_seed(seed)
    return MaskFace(cfg)


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    from maskface.checkpoint import save_checkpoint

    model = tiny_model(seed=0)
    path = tmp_path_factory.mktemp("donor") / "donor.pth"
    save_checkpoint(path, model, model.cfg)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_init_copies_matching_tensors_and_keeps_the_rest_fresh(donor):
    path, donor_state = donor
    model = tiny_model(seed=1, head_convs=2)  # one more conv: its tensors have no donor
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, str(path))
    state = model.state_dict()
    fpn = next(k for k in state if k.startswith("fpn."))
    assert torch.equal(state[fpn], donor_state[fpn]) and not torch.equal(fresh[fpn], donor_state[fpn])
    # keypoint_head.convs.3 is the new second conv (conv, GN, ReLU per block): kept fresh.
    assert "keypoint_head.convs.3.weight" in report["kept_fresh"]
    assert torch.equal(state["keypoint_head.convs.3.weight"], fresh["keypoint_head.convs.3.weight"])
    assert torch.equal(state["keypoint_head.convs.0.weight"], donor_state["keypoint_head.convs.0.weight"])
    assert all(torch.equal(state[k], donor_state[k]) for k in report["loaded"])


def test_init_exclude_keeps_a_whole_module_fresh(donor):
    path, donor_state = donor
    model = tiny_model(seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, str(path), exclude=("keypoint_head",))
    head = [k for k in fresh if k.startswith("keypoint_head.")]
    assert sorted(head) == sorted(k for k in report["kept_fresh"])
    assert all(torch.equal(model.state_dict()[k], fresh[k]) for k in head)
    assert not torch.equal(fresh[head[0]], donor_state[head[0]])  # the check can fail


def test_unknown_module_names_are_refused_with_the_real_ones(donor):
    with pytest.raises(ValueError, match="keypoint_head"):
        train_only(tiny_model(seed=0), ("keypoint_heads",))
    with pytest.raises(ValueError, match="no parameters under"):
        init_from_checkpoint(tiny_model(seed=0), str(donor[0]), exclude=("nope",))


def test_training_only_the_head_leaves_the_detector_bit_identical(donor, tmp_path):
    torch.set_num_threads(1)
    root = tmp_path / "faces"
    synthetic.write_widerface(root, splits=("train", "val"), num_images=4, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=11)
    overrides = {**SMOKE_MODEL_OVERRIDES, "keypoints": {**SMOKE_MODEL_OVERRIDES["keypoints"], "num_convs": 2,
                                                        "add_gt_as_proposals": True}}

    def options(out, iterations):
        return TrainOptions(
            data=f"widerface:{root}", output_dir=str(out), config="mbv2", model_overrides=overrides,
            batch_size=2, max_iter=iterations, warmup_iters=1, crop_size=64, scale_range=(0.8, 1.25),
            area_range=(16.0, 1e9), num_workers=0, progress=False, log_period=1, val_max_side=None,
            base_lr=0.05, val_metric="nme", eval_period=3, init_weights=str(donor[0]), init_exclude=("keypoint_head",),
            train_only=("keypoint_head",))

    train(options(tmp_path / "start", 0))
    train(options(tmp_path / "run", 3))
    start = read_checkpoint(tmp_path / "start" / "model_final.pth")["model"]
    trained = read_checkpoint(tmp_path / "run" / "model_final.pth")["model"]
    donor_state = donor[1]
    outside = [k for k in trained if not k.startswith("keypoint_head.")]
    assert outside and all(torch.equal(trained[k], donor_state[k]) for k in outside)
    head = [k for k in trained if k.startswith("keypoint_head.") and k.endswith("weight")]
    assert all(not torch.equal(trained[k], start[k]) for k in head)
    # --val-metric nme on WIDER FACE: validation measures landmarks and ranks by them.
    val = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
           if json.loads(line)["type"] == "val"]
    assert val and val[-1]["metric"] == "nme" and 0 < val[-1]["nme"] <= 1.0 and "nme_matched" in val[-1]
