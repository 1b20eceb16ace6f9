import pickle

import pytest
import torch

from maskface import build_model
from maskface.checkpoint import CheckpointError, load_model, load_weights, save_checkpoint


@pytest.fixture(scope="module")
def mbv2():
    torch.manual_seed(0)
    return build_model("mbv2")


def test_round_trip_rebuilds_the_same_model(tmp_path, mbv2):
    path = tmp_path / "ckpt" / "model.pth"
    save_checkpoint(path, mbv2, mbv2.cfg, iteration=7)
    assert [p.name for p in path.parent.iterdir()] == ["model.pth"]  # no temporary left behind
    loaded = load_model(path)
    assert loaded.cfg == mbv2.cfg
    for (name, a), (_, b) in zip(mbv2.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.load(path, weights_only=True)["iteration"] == 7


def test_wrong_architecture_is_refused_naming_both_configs(tmp_path, mbv2):
    path = tmp_path / "mbv2.pth"
    save_checkpoint(path, mbv2, mbv2.cfg)
    other = build_model("mbv2", num_landmarks=68)
    with pytest.raises(CheckpointError, match=r"checkpoint config 'mbv2'.*num_landmarks': 5.*model config 'mbv2'.*num_landmarks': 68"):
        load_weights(other, path)


def test_not_a_checkpoint_and_unsafe_pickles_are_refused(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a MaskFace checkpoint"):
        load_model(plain)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"format": "maskface", "config": Evil(), "model": {}}))
    with pytest.raises(CheckpointError, match="not a readable MaskFace checkpoint"):
        load_model(evil)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pth")


def test_failed_save_keeps_the_previous_file(tmp_path, mbv2, monkeypatch):
    path = tmp_path / "model.pth"
    save_checkpoint(path, mbv2, mbv2.cfg, iteration=1)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, mbv2, mbv2.cfg, iteration=2)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]
