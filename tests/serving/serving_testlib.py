"""Constants and helpers shared by the serving tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

MAX_SIDE = 192
LOW_THRESHOLD = 0.012
MAX_DETECTIONS = 5
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_BYTES = 2 << 20
PHOTOS = {"astronaut": ".jpg", "chelsea": ".png", "coffee": ".jpg"}  # skimage.data, encoded as given


def tiny_config():
    from maskface.config import ContextConfig, FPNConfig, get_config

    cfg = get_config("mbv2")
    cfg.fpn = FPNConfig(channels=64, gn_groups=8)
    cfg.context = ContextConfig(branch1=32, trunk=32, branch2=16, trunk2=48, branch3=16, gn_groups=8)
    cfg.keypoints.conv_channels = 64
    cfg.keypoints.gn_groups = 8
    cfg.keypoints.num_convs = 4
    return cfg


def low_inference():
    from maskface.config import InferenceConfig

    return InferenceConfig(score_threshold=LOW_THRESHOLD, max_detections=MAX_DETECTIONS)


def assert_stopped_cleanly(server, report) -> None:
    """The stop needed no SIGKILL and left no process of the server's group and no shm segment."""
    from maskface.serving.server import _process_group_members

    log = server.log_text(3000)
    assert report.returncode == 0, log
    assert report.clean, f"unclean stop: {report}\n{log}"
    assert _process_group_members(server.last_pgid) == []
    assert server.shm_segments() == []
