import json

import numpy as np
import pytest
import torch

from maskface import build_model
from maskface.checkpoint import save_checkpoint
from maskface.cli import main
from maskface.engine.predictor import Predictor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("mbv2")
    path = tmp_path_factory.mktemp("ckpt") / "mbv2.pt"
    save_checkpoint(path, model, model.cfg)
    return path


def test_detect_on_a_real_photo_writes_image_and_json(tmp_path, checkpoint):
    # A threshold of 0 keeps the best candidates of the untrained model, so the drawing and the
    # JSON carry real boxes and landmarks.
    rc = main(["detect", "--demo", "--checkpoint", str(checkpoint), "--out", str(tmp_path),
               "--json", "--score-threshold", "0", "--max-detections", "20", "--max-side", "256"])
    assert rc == 0
    image = tmp_path / "astronaut.jpg"
    data = json.loads((tmp_path / "astronaut.json").read_text())
    assert image.stat().st_size > 10_000
    assert (data["width"], data["height"]) == (512, 512)
    assert len(data["faces"]) == 20
    face = data["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
    # Results are in original pixels (the photo was processed at 256 px).
    assert all(0 <= v <= 512 for f in data["faces"] for v in f["box"])
    assert max(f["box"][2] for f in data["faces"]) > 256


def test_detect_reports_a_missing_image(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        main(["detect", str(tmp_path / "nope.jpg"), "--checkpoint", str(checkpoint), "--out", str(tmp_path)])


def test_predictor_maps_results_to_original_pixels():
    torch.manual_seed(0)
    model = build_model("mbv2").eval()
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 5
    image = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    full = Predictor(model, max_side=None)(image)
    half = Predictor(model, max_side=250)(image)
    assert full["boxes"].shape == (5, 4) and half["landmarks"].shape == (5, 5, 2)
    assert half["boxes"][:, 2].max() <= 500 and half["boxes"][:, 3].max() <= 300
