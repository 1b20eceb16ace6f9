"""End to end with faces (N > 0): a model trained briefly on synthetic faces, PyTorch Predictor vs
the exported graphs in ONNX Runtime (OnnxPredictor) on the same photos, at the default threshold."""
import cv2
import numpy as np
import pytest
import torch

from export.export_onnx import export_all
from maskface.checkpoint import load_model
from maskface.data import synthetic
from maskface.engine.predictor import Predictor
from maskface.engine.trainer import SMOKE_MODEL_OVERRIDES, TrainOptions, train
from maskface.serving.onnx_graphs import OnnxGraphs, OnnxPredictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    synthetic.write_widerface(root, splits=("train",), num_images=4, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=11)
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest and deterministic
    try:
        train(TrainOptions(
            data=f"widerface:{root}", output_dir=str(out), config="mbv2", model_overrides=SMOKE_MODEL_OVERRIDES,
            batch_size=2, max_iter=80, base_lr=0.02, warmup_iters=10, crop_size=64, scale_range=(1.0, 1.0),
            area_range=(16.0, 1e9), color=False, num_workers=0, progress=False, val_data="none",
            checkpoint_period=80, log_period=10, val_max_side=None,
        ))
    finally:
        torch.set_num_threads(threads)
    model = load_model(out / "model_final.pth")
    images = [cv2.imread(str(p)) for p in sorted(root.rglob("*.jpg"))]
    return model, images


def test_onnx_pipeline_finds_the_same_faces_as_pytorch(trained, tmp_path):
    model, images = trained
    paths = export_all(model, tmp_path)
    onnx_predictor = OnnxPredictor(OnnxGraphs(paths["detector"], paths["keypoint_head_portable"]),
                                   model.cfg.inference, model.cfg.input, max_side=None)
    torch_predictor = Predictor(model, max_side=None)
    assert len(images) == 4
    worst = {"boxes": 0.0, "scores": 0.0, "landmarks": 0.0}
    for image in images:
        ours, reference = onnx_predictor(image), torch_predictor(image)
        assert len(reference["scores"]) > 0, "the trained model should find the synthetic face"
        assert len(ours["scores"]) == len(reference["scores"])
        for key in worst:
            worst[key] = max(worst[key], float(np.abs(ours[key] - reference[key]).max()))
    print(f"\nend-to-end ONNX Runtime vs PyTorch on {len(images)} images with faces: {worst}")
    assert worst["boxes"] <= 1e-3 and worst["scores"] <= 1e-5 and worst["landmarks"] <= 0.05
