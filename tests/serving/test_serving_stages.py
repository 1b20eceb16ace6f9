"""The Python-backend stages in-process: limits, header parsing, and the chained stages == OnnxPredictor."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from maskface.config import InferenceConfig
from maskface.preprocess import decode_image
from maskface.serving import stages
from maskface.serving.stages import (
    CandidateSelector, InputBounds, OnnxModel, Parameters, Preprocessor, RequestError, check_keypoint_inputs,
    encoded_image_size, image_format, to_original_pixels,
)

from serving_testlib import MAX_SIDE, low_inference


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height, and no pixel data (a decompression-bomb stand-in)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def encode(ext: str, image: np.ndarray, *params) -> np.ndarray:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.reshape(-1)


def test_encoded_image_size_reads_png_and_jpeg_headers():
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert encoded_image_size(encode(".png", image)) == (53, 37)
    assert encoded_image_size(encode(".jpg", image)) == (53, 37)
    assert encoded_image_size(encode(".jpg", image, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)) == (53, 37)  # SOF2
    assert encoded_image_size(png_header_only(70000, 60000)) == (70000, 60000)
    assert encoded_image_size(b"GIF89a....") is None
    assert encoded_image_size(b"\xff\xd8\xff") is None


def test_preprocessor_limits_and_errors():
    pre = Preprocessor(max_side=MAX_SIDE, max_image_pixels=10_000, max_request_bytes=50_000)
    good = encode(".png", np.full((90, 100, 3), 128, np.uint8))
    out = pre(good)
    assert out.images.shape == (1, 3, 192, 192) and out.images.dtype == np.float32  # 173x192, padded
    assert out.scale_xy.dtype == np.float64 and out.original_size.tolist() == [90, 100]
    cases = [
        (np.zeros(0, np.uint8), "empty request"),
        (np.frombuffer(b"this is not an image at all", np.uint8), "not a JPEG or PNG file"),
        (np.frombuffer(png_header_only(20, 10) + b"garbage", np.uint8), "could not decode"),
        (np.frombuffer(b"\xff\xd8\xff\xe0\x00\x10JFIF", np.uint8), "could not read the image size from the JPEG"),
        (np.frombuffer(png_header_only(200, 100), np.uint8), "200x100 = 20000 pixels exceeds the limit of 10000"),
        (encode(".png", np.zeros((101, 100, 3), np.uint8)), "exceeds the limit of 10000 pixels"),
        (np.zeros(60_000, np.uint8), "exceeds the limit of 50000 bytes"),
        (np.zeros(10, np.float32), "must be UINT8"),
        (np.zeros((2, 5), np.uint8), "1-D byte array"),
    ]
    for data, message in cases:
        with pytest.raises(RequestError, match=message):
            pre(data)
    with pytest.raises(ValueError, match="max_image_pixels"):
        Preprocessor(max_image_pixels=10**12)


def test_parameters_from_model_config():
    config = {"name": "maskface_nms", "parameters": {
        "score_threshold": {"string_value": "0.25"}, "max_detections": {"string_value": "9"},
        "nms_threshold": {"string_value": "0.5"}, "pixel_mean": {"string_value": "1 2 3"}}}
    p = Parameters.from_model_config(config)
    assert CandidateSelector.from_parameters(p).cfg == InferenceConfig(score_threshold=0.25, max_detections=9,
                                                                        nms_threshold=0.5)
    assert p.get_floats("pixel_mean") == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="maskface_nms: config.pbtxt parameter 'onnx_file' is missing"):
        p.get_str("onnx_file")
    with pytest.raises(ValueError, match="'score_threshold' = 'abc'"):
        Parameters({"score_threshold": "abc"}).get_float("score_threshold")


def test_chained_stages_equal_onnx_predictor(onnx_dir, photos, reference):
    """The five models' logic, run in-process in the ensemble's order, gives OnnxPredictor's answer."""
    pre = Preprocessor(max_side=MAX_SIDE)
    detector = OnnxModel(onnx_dir / "detector.onnx")
    keypoints = OnnxModel(onnx_dir / "keypoint_head_portable.onnx")
    select = CandidateSelector(low_inference())
    for name, data in photos.items():
        p = pre(np.frombuffer(data, np.uint8))
        det = detector.run({"images": p.images})
        rois, det_scores = select(det["scores"], det["boxes"])
        kp = keypoints.run({**{f"m{i}": det[f"m{i}"] for i in range(2, 7)}, "rois": rois})
        out = to_original_pixels(rois, det_scores, kp["landmarks"], kp["landmark_scores"], p.scale_xy, p.original_size)
        ref = reference[name]
        assert len(ref["scores"]) > 0
        for key in ("boxes", "scores", "landmarks", "landmark_scores"):
            np.testing.assert_array_equal(out[key.upper()], ref[key], err_msg=f"{name} {key}")


def test_fused_pipeline_equals_onnx_predictor_and_keeps_the_limits(onnx_dir, photos, reference):
    """maskface_pipeline's logic (the cpu ensemble's one step) gives OnnxPredictor's answer, as float32
    arrays under the ensemble's output names, and refuses what maskface_preprocess refuses."""
    from maskface.serving.fused_stage import FusedPipeline, StageGraphs

    graphs = StageGraphs(OnnxModel(onnx_dir / "detector.onnx"), OnnxModel(onnx_dir / "keypoint_head_portable.onnx"))
    fused = FusedPipeline(Preprocessor(max_side=MAX_SIDE, max_image_pixels=500_000), graphs, low_inference())
    for name, data in photos.items():
        out = fused(np.frombuffer(data, np.uint8))
        assert list(out) == ["BOXES", "SCORES", "LANDMARKS", "LANDMARK_SCORES"]
        assert len(reference[name]["scores"]) > 0
        for key in ("boxes", "scores", "landmarks", "landmark_scores"):
            assert out[key.upper()].dtype == np.float32
            np.testing.assert_array_equal(out[key.upper()], reference[name][key], err_msg=f"{name} {key}")
    webp = encode(".webp", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(RequestError, match="not a JPEG or PNG"):
        fused(webp)
    with pytest.raises(RequestError, match="exceeds the limit of 500000 pixels"):
        fused(np.frombuffer(png_header_only(1000, 1000), np.uint8))


def test_batched_detector_equals_single_runs(onnx_dir, photos):
    pre = Preprocessor(max_side=MAX_SIDE)
    detector = OnnxModel(onnx_dir / "detector.onnx")
    # chelsea and coffee both resize to 128x192: one batch of 2; astronaut (192x192) runs alone
    feeds = [{"images": pre(np.frombuffer(photos[n], np.uint8)).images} for n in ("chelsea", "astronaut", "coffee")]
    batched = detector.run_batched(feeds)
    for f, result in zip(feeds, batched):
        single = detector.run(f)
        for key, value in single.items():
            np.testing.assert_allclose(result[key], value, atol=1e-5, rtol=1e-5)
    bad = detector.run_batched([{"images": np.zeros((1, 2, 64, 64), np.float32)}, feeds[1]])  # 2 channels
    assert isinstance(bad[0], Exception) and isinstance(bad[1], dict)


def test_empty_detections_and_shape_checks():
    out = to_original_pixels(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32),
                             np.zeros((0, 5), np.float32), np.array([0.5, 0.5]), np.array([100, 200], np.int32))
    assert [out[k].shape for k in ("BOXES", "SCORES", "LANDMARKS", "LANDMARK_SCORES")] == [(0, 4), (0,), (0, 5, 2), (0, 5)]
    with pytest.raises(RequestError, match="do not match"):
        to_original_pixels(np.zeros((2, 5), np.float32), np.zeros(2, np.float32), np.zeros((1, 5, 2), np.float32),
                           np.zeros((1, 5), np.float32), np.array([1.0, 1.0]), np.array([10, 10], np.int32))
    rois, scores = CandidateSelector(InferenceConfig())(np.full((1, 50), 0.01, np.float32), np.zeros((1, 50, 4), np.float32))
    assert rois.shape == (0, 5) and scores.shape == (0,)


class FakePbUtils:
    """Just enough of triton_python_backend_utils to check the response glue."""

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return FakePbUtils.Tensor(name, request[name]) if name in request else None


def test_respond_turns_failures_into_per_request_errors():
    def handler(x):
        if x.size == 0:
            raise RequestError("empty")
        if x.size == 2:
            raise RuntimeError("boom")
        return {"y": x * 2}

    responses = stages.respond(FakePbUtils, [{"x": np.ones(3)}, {"x": np.ones(0)}, {"x": np.ones(2)}, {}], ["x"], handler)
    assert responses[0].error is None and responses[0].output_tensors[0].array.tolist() == [2, 2, 2]
    assert (responses[1].error.code, responses[1].error.message) == ("INVALID_ARG", "empty")
    assert (responses[2].error.code, responses[2].error.message) == ("INTERNAL", "RuntimeError: boom")
    assert responses[3].error.code == "INVALID_ARG" and "'x' is missing" in responses[3].error.message


def test_decode_matches_library(photos):
    pre = Preprocessor(max_side=MAX_SIDE)
    for data in photos.values():
        assert pre(np.frombuffer(data, np.uint8)).original_size.tolist() == list(decode_image(data).shape[:2])


# ----------------------------------------------------------------------------- hostile inputs


def test_only_jpeg_and_png_reach_the_decoder():
    """WebP/TIFF/BMP/GIF are refused from their first bytes: OpenCV would decode them fully before
    any size check (a 1.4 kB lossless WebP of 6000x6000 decodes to 108 MB)."""
    pre = Preprocessor(max_side=MAX_SIDE, max_image_pixels=10_000, max_request_bytes=4 << 20)
    bomb = np.zeros((6000, 6000, 3), np.uint8)
    others = {".webp": encode(".webp", bomb, cv2.IMWRITE_WEBP_QUALITY, 101), ".tiff": encode(".tiff", bomb),
              ".bmp": encode(".bmp", np.zeros((50, 50, 3), np.uint8)),
              ".gif": np.frombuffer(b"GIF89a\x10\x00\x10\x00" + bytes(20), np.uint8)}
    assert others[".webp"].size < 2000 and others[".tiff"].size < 2 << 20  # small files, huge images
    for ext, data in others.items():
        assert image_format(data) is None, ext
        with pytest.raises(RequestError, match="is not a JPEG or PNG file"):
            pre(data)
    assert image_format(encode(".png", np.zeros((4, 4, 3), np.uint8))) == "png"
    assert image_format(encode(".jpg", np.zeros((4, 4, 3), np.uint8))) == "jpeg"


def test_jpeg_size_found_behind_large_app_segments():
    """The frame header can sit more than 1 MB in (twenty 64 kB APP1 segments): still read from the header."""
    jpeg = encode(".jpg", np.zeros((30, 40, 3), np.uint8)).tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + bytes(65533)
    padded = jpeg[:2] + app1 * 20 + jpeg[2:]
    assert len(padded) > 1 << 20
    assert encoded_image_size(padded) == (40, 30)
    out = Preprocessor(max_side=MAX_SIDE, max_request_bytes=4 << 20)(np.frombuffer(padded, np.uint8))
    assert out.original_size.tolist() == [30, 40]


def test_detector_input_bounds_hand_computed():
    b = InputBounds(max_side=192, size_divisibility=64, max_image_pixels=10_000, max_detections=5)
    assert b.max_input_side == 192
    b.check_input_size(192, 128)
    for (h, w), message in [((256, 64), "exceeds 192 px per side"), ((100, 64), "multiples of 64"),
                            ((0, 64), "multiples of 64"), ((1280, 1280), "exceeds 192 px per side")]:
        with pytest.raises(RequestError, match=message):
            b.check_input_size(h, w)
    # no resize: the smallest original padding to H x W is (H - 63) x (W - 63) and must fit 10,000 px
    free = InputBounds(max_side=0, size_divisibility=64, max_image_pixels=10_000)
    free.check_input_size(192, 128)  # 129 * 65 = 8385
    with pytest.raises(RequestError, match="exceeds the limit of 10000 pixels"):
        free.check_input_size(192, 192)  # 129 * 129 = 16641
    with pytest.raises(RequestError, match="NaN or infinite"):
        b.check_images(np.full((1, 3, 64, 64), np.nan, np.float32))


def features(batch=1, channels=8, height=128, width=192):
    return {f"m{i}": np.zeros((batch, channels, -(-height // s), -(-width // s)), np.float32)
            for i, s in zip(range(2, 7), (4, 8, 16, 32, 64))}


def test_keypoint_inputs_are_bounded():
    b = InputBounds(max_side=192, size_divisibility=64, max_image_pixels=10**6, max_detections=5)
    roi = [0, 10, 20, 50, 60]
    check_keypoint_inputs({**features(), "rois": np.array([roi] * 5, np.float32)}, b)  # 128 x 192 image
    check_keypoint_inputs({**features(), "rois": np.zeros((0, 5), np.float32)}, b)
    bad = [
        (np.array([roi] * 10_000, np.float32), "10000 rois exceed the limit of 5"),
        (np.array([roi] * 6, np.float32), "6 rois exceed the limit of 5"),
        (np.array([[0, np.nan, 20, 50, 60]], np.float32), "finite"),
        (np.array([[0, 1e30, 20, 2e30, 60]], np.float32), "inside the 128x192 px input image"),
        (np.array([[0, 50, 20, 10, 60]], np.float32), "x1 <= x2"),
        (np.array([[0, 10, 20, 50, 129]], np.float32), "inside the 128x192"),
        (np.array([[0, -1, 20, 50, 60]], np.float32), "inside the 128x192"),
        (np.array([[1, 10, 20, 50, 60]], np.float32), r"whole batch indices in 0\.\.0"),
        (np.array([[0.5, 10, 20, 50, 60]], np.float32), "whole batch indices"),
        (np.zeros((2, 4), np.float32), r"rois must be \[N, 5\]"),
    ]
    for rois, message in bad:
        with pytest.raises(RequestError, match=message):
            check_keypoint_inputs({**features(), "rois": rois}, b)
    uneven = features()
    uneven["m4"] = np.zeros((1, 8, 9, 12), np.float32)
    with pytest.raises(RequestError, match=r"m4 has shape \[1, 8, 9, 12\], expected \[1, 8, 8, 12\]"):
        check_keypoint_inputs({**uneven, "rois": np.zeros((0, 5), np.float32)}, b)
    with pytest.raises(RequestError, match="exceeds 192 px per side"):  # m2 of a 1280 x 1280 input
        check_keypoint_inputs({**features(height=1280, width=1280), "rois": np.zeros((0, 5), np.float32)}, b)


def test_postprocess_refuses_what_no_earlier_stage_produces():
    b = InputBounds(max_side=192, size_divisibility=64, max_image_pixels=10**6, max_detections=5)
    good = dict(rois=np.array([[0, 10, 20, 50, 60]], np.float32), det_scores=np.array([0.9], np.float32),
                landmarks=np.zeros((1, 5, 2), np.float32), landmark_scores=np.zeros((1, 5), np.float32),
                scale_xy=np.array([0.5, 0.5]), original_size=np.array([300, 384], np.int32))
    out = to_original_pixels(**good, bounds=b)
    np.testing.assert_array_equal(out["BOXES"], [[20, 40, 100, 120]])  # / 0.5, inside 384 x 300
    cases = [
        (dict(scale_xy=np.array([0.0, 0.5])), "finite and positive"),
        (dict(scale_xy=np.array([np.nan, 0.5])), "finite and positive"),
        (dict(scale_xy=np.array([100.0, 100.0])), "exceeds the 192 px input"),
        (dict(original_size=np.array([-300, 384], np.int32)), "must be positive"),
        (dict(original_size=np.array([2000, 2000], np.int32)), "at most 1000000 pixels"),
        (dict(det_scores=np.array([0.9, 0.8], np.float32)), r"det_scores \[2\] does not match 1 rois"),
        (dict(rois=np.array([[0, 1e30, 20, 1e30, 60]], np.float32)), "inside the 192x192 px"),
        (dict(rois=np.array([[0, 50, 20, 10, 60]], np.float32)), "x1 <= x2"),
        (dict(landmarks=np.full((1, 5, 2), np.inf, np.float32)), "landmarks must be finite"),
    ]
    for change, message in cases:
        with pytest.raises(RequestError, match=message):
            to_original_pixels(**{**good, **change}, bounds=b)


def test_nms_refuses_non_finite_or_outside_candidates():
    select = CandidateSelector(low_inference(), InputBounds(max_side=192, max_detections=5))
    scores, boxes = np.full((1, 4), 0.5, np.float32), np.tile(np.float32([0, 0, 10, 10]), (1, 4, 1))
    assert select(scores, boxes)[0].shape == (1, 5)  # four equal boxes: NMS keeps one
    with pytest.raises(RequestError, match="scores must be finite"):
        select(np.full((1, 4), np.nan, np.float32), boxes)
    with pytest.raises(RequestError, match="inside the 192x192"):
        select(scores, np.tile(np.float32([0, 0, 1e30, 1e30]), (1, 4, 1)))


def test_gateway_header_checks():
    """maskface.serving.gateway.check_infer_header: what Triton would answer with 500 (or accept) is a 400."""
    from maskface.serving.gateway import BadRequest, check_infer_header

    def image(**fields):
        return {"inputs": [{"name": "IMAGE", "datatype": "UINT8", **fields}]}

    check_infer_header(image(shape=[3], data=[0, 128, 255]), None)
    check_infer_header(image(shape=[10], parameters={"binary_data_size": 10}), 10)
    check_infer_header({**image(shape=[0], data=[]), "outputs": [{"name": "BOXES"}]}, None)
    cases = [
        ([], None, "JSON object"),
        (image(shape=[10], parameters={"binary_data_size": 10}), 9, "binary part of 10 bytes"),
        (image(shape=[10], parameters={"binary_data_size": 12}), 10, "binary_data_size 12"),
        (image(shape=[10], parameters={"binary_data_size": 10}), None, "no Inference-Header-Content-Length"),
        (image(shape=[3], data=[1, 2, 3]), 5, "5 binary bytes follow"),
        (image(shape=[3], data=[1, 2, True]), None, "integers in 0..255"),
        (image(shape=[3], data=[[1, 2, 3]]), None, "flat list of 3 byte values"),
        (image(shape=[1], data=[[1]]), None, "integers in 0..255"),
        (image(shape=[1.5], data=[1]), None, r"shape must be \[n\]"),
        (image(shape=[2, 2], data=[1, 2, 3, 4]), None, r"shape must be \[n\]"),
        ({**image(shape=[1], data=[1]), "outputs": [{"name": "m2"}]}, None, "'outputs' may only name"),
        ({"inputs": [image(shape=[1], data=[1])["inputs"][0]] * 2}, None, "exactly one input"),
    ]
    for header, binary, message in cases:
        with pytest.raises(BadRequest, match=message):
            check_infer_header(header, binary)


def test_keep_buffers_in_heap_stops_per_request_page_faults():
    """Under the server's fixed 1 MB mmap threshold, each of 20 filled-and-freed 8 MB arrays is a fresh
    mapping whose pages fault in again: at least 8 MB / 2 MB = 4 faults each even with transparent huge
    pages (2,048 with 4 kB pages). After keep_buffers_in_heap the heap keeps the block and reuses it."""
    import subprocess
    import sys

    script = (
        "import resource, sys, numpy as np\n"
        "from maskface.serving.stages import keep_buffers_in_heap\n"
        "if sys.argv[1] == 'keep': assert keep_buffers_in_heap()\n"
        "np.ones(1 << 20)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): a = np.ones(1 << 20); del a\n"  # 8 MB of float64, every page written
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    env = {**__import__("os").environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True,
                                       check=True).stdout.split()[-1]) for mode in ("server", "keep")}
    assert faults["server"] >= 20 * 4, faults
    assert faults["keep"] <= 4, faults
