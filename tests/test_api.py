"""maskface.load(): a path, an array or a list in; Detections that draw, save and serialise."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import maskface
from maskface.checkpoint import load_model, save_checkpoint
from maskface.engine.predictor import Predictor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = maskface.get_config("tiny")
    cfg.inference.score_threshold = 0.0  # an untrained model: keep every candidate so there is something to draw
    cfg.inference.max_detections = 5
    path = tmp_path_factory.mktemp("api") / "tiny.pth"
    save_checkpoint(path, maskface.build_model(config=cfg), cfg)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    cv2.imwrite(str(path), image)
    return path, image


def test_load_on_a_path_equals_the_predictor_on_the_array(checkpoint, photo):
    path, image = photo
    torch.set_num_threads(1)
    detector = maskface.load(checkpoint, device="cpu")
    faces = detector(str(path))
    assert isinstance(faces, maskface.Detections) and faces.name == "photo" and len(faces) == 5
    reference = Predictor(load_model(checkpoint), device="cpu", max_side=640)(image)
    for key in ("boxes", "scores", "landmarks", "landmark_scores"):
        np.testing.assert_array_equal(getattr(faces, key), reference[key])
    assert faces.landmarks.shape == (5, 5, 2)

    # an array and a list give the same numbers; a list gives a list
    from_array = detector(image)
    np.testing.assert_array_equal(from_array.boxes, faces.boxes)
    both = detector([path, image])
    assert isinstance(both, list) and len(both) == 2
    np.testing.assert_array_equal(both[1].scores, faces.scores)


def test_detections_draw_save_and_serialise(checkpoint, photo, tmp_path):
    path, image = photo
    faces = maskface.load(checkpoint, device="cpu")(path)
    data = json.loads(faces.to_json())
    assert (data["image"], data["height"], data["width"]) == ("photo", 96, 128)
    assert len(data["faces"]) == 5
    first = data["faces"][0]
    assert first["box"] == [round(float(v), 2) for v in faces.boxes[0]]
    assert len(first["landmarks"]) == 5 and len(first["landmark_scores"]) == 5

    drawn = faces.draw()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (drawn != image).any() and (faces.image == image).all()  # drawn on a copy
    saved = cv2.imread(str(faces.save(tmp_path / "out.png")))
    np.testing.assert_array_equal(saved, drawn)  # PNG is lossless
    assert json.loads(faces.save(tmp_path / "out.json").read_text()) == data
    with pytest.raises(ValueError, match=r"\.json"):
        faces.save(tmp_path / "out.txt")


def test_bad_inputs_say_what_is_expected(checkpoint, tmp_path):
    detector = maskface.load(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="BGR uint8"):
        detector(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="BGR uint8"):
        detector(np.zeros((32, 32), np.uint8))
    with pytest.raises(TypeError, match="image path"):
        detector(42)
    with pytest.raises(FileNotFoundError, match="not found"):
        detector(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        maskface.load(tmp_path / "missing.pth")


def test_load_without_a_checkpoint_uses_the_demo_model(checkpoint, tmp_path, monkeypatch):
    """Both states of an installation: demo checkpoint absent (clear error) and present (loaded)."""
    from maskface.demo import weights

    monkeypatch.setattr(weights, "DEMO_CHECKPOINT", tmp_path / "maskface_demo.pth")
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        maskface.load()
    monkeypatch.setattr(weights, "DEMO_CHECKPOINT", checkpoint)
    detector = maskface.load(device="cpu")
    assert detector.model.cfg.name == "tiny"
