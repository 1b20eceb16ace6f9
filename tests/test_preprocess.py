import cv2
import numpy as np
import pytest

from maskface.config import InputConfig
from maskface.preprocess import decode_image, prepare_image


def test_prepare_resizes_pads_to_64_and_normalises():
    image = np.full((389, 517, 3), (10, 20, 30), np.uint8)  # BGR
    prepared = prepare_image(image, InputConfig(), max_side=320)
    c, h, w = prepared.image.shape
    assert (c, h % 64, w % 64) == (3, 0, 0)
    assert (h, w) == (256, 320)  # 389*320/517 = 240.8 -> 241 rows, padded to 256
    cfg = InputConfig()
    expected_r = (30 - cfg.pixel_mean[0]) / cfg.pixel_std[0]  # channel 0 is red
    assert np.allclose(prepared.image[0, :241, :320], expected_r, atol=1e-5)
    assert np.all(prepared.image[:, 241:, :] == 0)
    back = prepared.to_original(np.array([[320.0, 241.0]]))
    assert np.allclose(back, [[517.0, 389.0]], atol=1e-4)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="BGR uint8"):
        prepare_image(np.zeros((10, 10), np.uint8), InputConfig())
    with pytest.raises(ValueError, match="BGR uint8"):
        prepare_image(np.zeros((10, 10, 3), np.float32), InputConfig())
    with pytest.raises(ValueError, match="empty image bytes"):
        decode_image(b"")
    with pytest.raises(ValueError, match="could not decode"):
        decode_image(b"definitely not a jpeg")
    ok, png = cv2.imencode(".png", np.zeros((5, 7, 3), np.uint8))
    assert decode_image(png.tobytes()).shape == (5, 7, 3)
