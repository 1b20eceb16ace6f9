import json

import cv2

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
    path = tmp_path_factory.mktemp("ckpt") / "mbv2.pth"
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


def test_detect_reports_a_missing_image_in_one_line(tmp_path, checkpoint, capsys):
    argv = ["detect", str(tmp_path / "nope.jpg"), "--checkpoint", str(checkpoint), "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("maskface detect: error: FileNotFoundError: image") and "nope.jpg not found" in err
    with pytest.raises(FileNotFoundError, match="nope.jpg"):  # --debug: the exception and its traceback
        main(["--debug", *argv])


def test_detect_refuses_inputs_that_would_overwrite_each_other(tmp_path, checkpoint, capsys):
    import cv2

    for folder, ext in (("d1", ".jpg"), ("d2", ".png")):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / f"photo{ext}"), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out"
    rc = main(["detect", str(tmp_path / "d1" / "photo.jpg"), str(tmp_path / "d2" / "photo.png"),
               "--checkpoint", str(checkpoint), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "d1/photo.jpg and " in err and "d2/photo.png would both be written as photo.jpg" in err
    assert not out.exists()  # refused before anything ran or was written


def test_predictor_maps_results_to_original_pixels():
    """The predictor's outputs equal the network's own outputs on the resized input, mapped back by
    hand: a 500x300 image at max_side 250 is resized by exactly 1/2 (250x150), so boxes and
    landmarks double; boxes are then clipped to the 500x300 image."""
    torch.manual_seed(0)
    model = build_model("mbv2").eval()
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 5
    image = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    half = Predictor(model, max_side=250)(image)

    small = cv2.resize(image, (250, 150), interpolation=cv2.INTER_AREA)
    rgb = (small[:, :, ::-1].astype(np.float32) - np.float32([123.675, 116.28, 103.53])) / np.float32(
        [58.395, 57.12, 57.375])
    padded = np.zeros((3, 192, 256), np.float32)  # padded to multiples of 64
    padded[:, :150, :250] = rgb.transpose(2, 0, 1)
    with torch.no_grad():
        (net,) = model(torch.from_numpy(padded)[None])
    expect_boxes = np.clip(net["boxes"].numpy() * 2.0, 0, [500, 300, 500, 300])
    np.testing.assert_allclose(half["boxes"], expect_boxes, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(half["landmarks"], net["landmarks"].numpy() * 2.0, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(half["scores"], net["scores"].numpy(), rtol=1e-6)
    # Candidates reach beyond the 250x150 content (into the padding): the mapping is not just bounds.
    assert net["boxes"][:, 2].max() > 125 and half["boxes"][:, 2].max() > 250


def test_min_side_resizes_the_shorter_side_exactly():
    """§4.2 landmark protocol: shorter side 640, up or down, whatever the longer side."""
    from maskface.preprocess import resize_scale

    assert resize_scale(300, 500, None, 640) == 640 / 300  # up
    assert resize_scale(1280, 960, None, 640) == 640 / 960  # down
    assert resize_scale(300, 500, 800, 640) == 800 / 500  # capped by max_side
    torch.manual_seed(0)
    model = build_model("mbv2").eval()
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 3
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    out = Predictor(model, max_side=None, min_side=128)(image, with_landmarks=False)
    big = cv2.resize(image, (192, 128), interpolation=cv2.INTER_LINEAR)  # scale exactly 2
    ref = Predictor(model, max_side=None)(big, with_landmarks=False)
    np.testing.assert_allclose(out["boxes"], np.clip(ref["boxes"] / 2.0, 0, [96, 64, 96, 64]), atol=1e-4)
