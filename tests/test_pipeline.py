"""One pipeline, many runtimes: a change of a stage's behaviour made in ONE place reaches every runner.

The selection rule lives in maskface.postprocess.select_detections (`score >= threshold`). Patched
to `score > threshold`, the PyTorch Predictor, the ONNX Runtime OnnxPredictor, the Triton NMS stage
(maskface.serving.stages.CandidateSelector, in-process) and the latency benchmark's runners must all
drop exactly the faces whose score equals the threshold, and nothing else."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskface import postprocess
from maskface.config import InferenceConfig, get_config
from maskface.modeling.maskface import build_model


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from export.export_onnx import export_all
    from maskface.engine.predictor import Predictor
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime

    torch.manual_seed(0)
    model = build_model(config=get_config("tiny")).eval()
    model.cfg.inference = InferenceConfig(score_threshold=0.0, nms_threshold=0.4, max_detections=12)
    paths = export_all(model, tmp_path_factory.mktemp("onnx"))
    ort = OrtRuntime(paths["detector"], paths["keypoint_head_portable"], threads=1)
    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    return model, ort, Predictor(model, max_side=None), OnnxPredictor(ort, model.cfg.inference, model.cfg.input,
                                                                      max_side=None), image


def strictly_above(original):
    """select_detections with `score > threshold` semantics (the next float32 up, `>=`)."""
    calls = []

    def select(scores, boxes, score_threshold, nms_threshold, max_detections):
        calls.append(score_threshold)
        above = np.nextafter(np.float32(score_threshold), np.float32(np.inf))
        return original(scores, boxes, float(above), nms_threshold, max_detections)

    return select, calls


def test_a_selection_change_in_one_place_reaches_every_runner(runners, monkeypatch):
    from benchmarks.latency import OrtRunner, TorchRunner
    from maskface.serving.stages import CandidateSelector

    model, ort, predictor, onnx_predictor, image = runners
    inference = model.cfg.inference  # shared by both predictors
    images = onnx_predictor_input(onnx_predictor, image)
    scores, boxes, _ = ort.detect(images)
    with torch.no_grad():
        t_scores, t_boxes, _ = TorchRunner(model, "cpu").detect(torch.from_numpy(images))
    candidates = {"torch": (t_scores[0], t_boxes[0]), "onnxruntime": (scores[0], boxes[0])}

    def candidate_threshold(backend: str) -> float:
        """The 8th best score after NMS at threshold 0: a score this backend really produces."""
        from maskface.pipeline import select_candidates

        inference.score_threshold = 0.0
        backend_scores, backend_boxes = candidates[backend]
        return float(backend_scores[select_candidates(backend_scores, backend_boxes, inference)][7])

    runs = {  # name: (backend of its candidates, a call of the runner -> its kept scores)
        "Predictor": ("torch", lambda: predictor(image)["scores"]),
        "OnnxPredictor": ("onnxruntime", lambda: onnx_predictor(image)["scores"]),
        "CandidateSelector (Triton NMS stage)": ("onnxruntime", lambda: CandidateSelector(inference)(scores, boxes)[1]),
        "latency TorchRunner": ("torch", lambda: t_scores[0][TorchRunner(model, "cpu").select(
            t_scores[0], t_boxes[0], inference)].numpy()),
        "latency OrtRunner": ("onnxruntime", lambda: scores[0][OrtRunner(ort, "ONNX Runtime").select(
            scores[0], boxes[0], inference)]),
    }
    for name, (backend, run) in runs.items():
        threshold = candidate_threshold(backend)
        inference.score_threshold = threshold
        before = np.asarray(run())
        assert len(before) == 8 and before.min() == np.float32(threshold), name  # `>=` keeps the face at it
        patched, calls = strictly_above(postprocess.select_detections)
        monkeypatch.setattr(postprocess, "select_detections", patched)
        after = np.asarray(run())
        monkeypatch.undo()
        np.testing.assert_array_equal(after, before[before > np.float32(threshold)], err_msg=name)
        assert len(after) == 7 and calls == [threshold], name
    # and the whole result follows: boxes, landmarks of the other faces unchanged
    inference.score_threshold = candidate_threshold("torch")
    full_before = predictor(image)
    monkeypatch.setattr(postprocess, "select_detections", strictly_above(postprocess.select_detections)[0])
    full_after = predictor(image)
    for key in ("boxes", "scores", "landmarks", "landmark_scores"):
        np.testing.assert_array_equal(full_after[key], full_before[key][:7], err_msg=key)


def onnx_predictor_input(pipeline, image) -> np.ndarray:
    from maskface.preprocess import prepare_image

    return prepare_image(image, pipeline.input_cfg, pipeline.max_side).image[None]


def test_onnx_runtime_sessions_stop_spinning_when_a_run_returns(runners, tmp_path):
    """ort_session's workers stop spin-waiting when a run returns (benchmarks/ort_spinning.py measures
    why); stop_spinning=False leaves ONNX Runtime's default, the benchmark's baseline."""
    from export.export_onnx import export_keypoint_head
    from maskface.runtimes.ort_runtime import ort_session

    model, ort, *_ = runners
    for session in (ort.detector, ort.keypoint_head):
        assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    export_keypoint_head(model, tmp_path / "keypoint_head_portable.onnx", portable=True)
    default = ort_session(tmp_path / "keypoint_head_portable.onnx", 1, stop_spinning=False)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_options().get_session_config_entry("session.force_spinning_stop")


def test_onnx_runtime_session_from_a_serialised_graph(runners, tmp_path):
    """ort_session takes a graph edited in memory (bytes) as it takes a file: same outputs; quiet logs
    only errors; a missing file says which command writes it."""
    import onnx

    from export.export_onnx import export_keypoint_head
    from maskface.pipeline import keypoint_feeds
    from maskface.runtimes.ort_runtime import ort_session

    model, ort, _, onnx_pipeline, image = runners
    path = export_keypoint_head(model, tmp_path / "keypoint_head_portable.onnx", portable=True)
    from_bytes = ort_session(onnx.load(str(path)).SerializeToString(), 1, quiet=True)
    from_file = ort_session(path, 1)
    assert from_bytes.get_session_options().log_severity_level == 3
    assert from_file.get_session_options().log_severity_level != 3
    _, _, features = ort.detect(onnx_predictor_input(onnx_pipeline, image))
    feeds = keypoint_feeds(features, np.array([[0, 2.0, 3.0, 40.0, 50.0]], np.float32))
    for a, b in zip(from_bytes.run(None, feeds), from_file.run(None, feeds)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="build_engines"):
        ort_session(tmp_path / "missing.onnx")
