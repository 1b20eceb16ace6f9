from types import SimpleNamespace

import numpy as np
import pytest
import torch

from maskface import build_model


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth blobs + gradient, uint8 BGR: structured enough to give non-trivial activations."""
    import cv2

    coarse = rng.uniform(0, 255, (height // 16, width // 16, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]
    return image.clip(0, 255).astype(np.uint8)


def synthetic_records(folder) -> list[SimpleNamespace]:
    """Three synthetic images of different sizes written into `folder`, as records (image_path, source)."""
    import cv2

    rng = np.random.default_rng(0)
    records = []
    for i, (h, w) in enumerate([(192, 256), (256, 192), (200, 300)]):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), synthetic_image(rng, h, w))
        records.append(SimpleNamespace(image_path=path, source=f"synthetic {i}"))
    return records


@pytest.fixture(scope="session")
def export_model():
    """The small preset, seeded: what the export tests export and compare against."""
    torch.manual_seed(0)
    return build_model("mbv2").eval()


@pytest.fixture(scope="session")
def built(tmp_path_factory, export_model):
    """Run the main job once on this CPU machine: export + ONNX Runtime parity (+ TensorRT status)."""
    from export.build_engines import main

    out = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)  # build_engines seeds the same initialisation as export_model
    code = main(["--config", "mbv2", "--out", str(out)])
    return out, code


@pytest.fixture(scope="session")
def detector_k5000(tmp_path_factory, export_model):
    """detector.onnx as exported before issue 11: an in-graph TopK with K = 5000 (beyond TensorRT's 3840)."""
    import copy

    from export.export_onnx import export_detector

    model = copy.deepcopy(export_model)
    model.cfg.inference.pre_nms_topk = 5000
    return export_detector(model, tmp_path_factory.mktemp("k5000") / "detector.onnx")


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory):
    """export/quantize_int8.py's build of the seeded tiny model, calibrated on three synthetic images
    (MinMax: fast, and its ranges hold every calibration value); detector and keypoint head in INT8."""
    from export.export_onnx import export_detector, export_keypoint_head
    from export.quantize_int8 import KEYPOINT_SCOPES, Int8Settings, build_int8

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    out = tmp_path_factory.mktemp("int8")
    detector = export_detector(model, out / "detector.onnx")
    keypoints = export_keypoint_head(model, out / "keypoint_head_portable.onnx", portable=True)
    records = synthetic_records(out)
    # Every detection passes the score threshold, so the keypoint head gets rois to calibrate on.
    model.cfg.inference.score_threshold = 0.0
    model.cfg.inference.max_detections = 8
    build = build_int8(detector, keypoints, out, records, model.cfg, Int8Settings(method="minmax"),
                       Int8Settings(method="minmax", scopes=KEYPOINT_SCOPES), progress=False)
    return SimpleNamespace(build=build, model=model, records=records, out=out)
