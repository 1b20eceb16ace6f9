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


@pytest.mark.parametrize("size", [(97, 130), (64, 128), (1, 1), (389, 517)])
def test_normalised_planes_are_the_whole_image_formula_bit_for_bit(size):
    """Reference: the textbook order (whole image to float32, BGR -> RGB, minus mean, over std,
    HWC -> CHW, zero padding), written here with numpy."""
    h, w = size
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cfg = InputConfig()
    rgb = (image[:, :, ::-1].astype(np.float32) - np.asarray(cfg.pixel_mean, np.float32)) \
        / np.asarray(cfg.pixel_std, np.float32)
    ph, pw = -(-h // 64) * 64, -(-w // 64) * 64
    expected = np.zeros((3, ph, pw), np.float32)
    expected[:, :h, :w] = rgb.transpose(2, 0, 1)
    got = prepare_image(image, cfg, max_side=None)
    assert got.image.dtype == np.float32 and got.image.flags.c_contiguous
    assert np.array_equal(got.image, expected)
    assert got.scale_xy == (1.0, 1.0) and got.original_size == (h, w)


def test_a_resized_image_is_normalised_the_same_way():
    image = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    cfg = InputConfig()
    resized = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    want = (resized[:, :, ::-1].astype(np.float32) - np.asarray(cfg.pixel_mean, np.float32)) \
        / np.asarray(cfg.pixel_std, np.float32)
    got = prepare_image(image, cfg, max_side=160)
    assert got.image.shape == (3, 128, 192)
    assert np.array_equal(got.image[:, :120, :160], want.transpose(2, 0, 1))
    assert not got.image[:, 120:].any() and not got.image[:, :, 160:].any()
    assert got.scale_xy == (160 / 400, 120 / 300)
