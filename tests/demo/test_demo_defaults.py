"""One rule for which model a command loads: --checkpoint, else a seeded preset when asked for,
else the shipped demo model (and a clear error where an installation lacks it)."""
import pytest

from maskface.demo import weights


def test_explicit_checkpoint_wins():
    assert weights.default_checkpoint("my.pth", "r50", random_init=True) == "my.pth"


def test_a_preset_or_random_init_means_seeded_weights():
    assert weights.default_checkpoint(None, "mbv2") is None
    assert weights.default_checkpoint(None, None, random_init=True) is None


def test_otherwise_the_shipped_demo_model(tmp_path, monkeypatch):
    fake = tmp_path / "maskface_demo.pth"
    monkeypatch.setattr(weights, "DEMO_CHECKPOINT", fake)
    with pytest.raises(FileNotFoundError, match="--checkpoint PATH"):
        weights.default_checkpoint(None, None)
    fake.write_bytes(b"x")
    assert weights.default_checkpoint(None, None) == str(fake)


def test_the_demo_checkpoint_ships_with_the_package():
    from maskface.checkpoint import checkpoint_config, read_checkpoint

    path = weights.demo_checkpoint()
    assert path.stat().st_size <= 25 * 2**20  # the repository's size rule for the one binary
    cfg = checkpoint_config(path)
    assert cfg.name == "demo" and cfg.backbone.activation == "relu" and not cfg.backbone.mobilenet_last_conv
    data = read_checkpoint(path)
    assert {"optimizer", "scheduler", "iteration", "rng"} <= set(data)  # training can resume from it
