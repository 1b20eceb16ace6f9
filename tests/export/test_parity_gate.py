"""The parity gate is relative to each tensor's scale, names the failing tensor and prints the way out.

Hand cases: the reported float-noise failure (m2 max |diff| 1.16e-4 on a map of scale ~1, mean
1.9e-6) passes max|a-b| <= 1e-4 + 1e-3 * 1.0 and fails the old absolute 1e-4; an error of half
the tensor's scale (a wrong op) fails at any scale.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import maskface
from export.build_engines import parse_args, trt_parity_exit_code
from export.parity import FP32_RTOL, CaseReport, failure_message, run_parity, summarise, to_markdown, with_rtol


def _case(m2_err: float, m2_scale: float) -> CaseReport:
    maps = ("m2", "m3", "m4", "m5", "m6")
    return CaseReport("trained_photo", (448, 640), 1e-7, 4e-4, {m: (m2_err if m == "m2" else 1e-6) for m in maps},
                      {m: 1.9e-6 for m in maps}, 37, scores_scale=0.99, boxes_scale=640.0,
                      features_scale={m: (m2_scale if m == "m2" else 1.0) for m in maps}, landmarks_max_abs_px=6e-5)


def test_float_noise_on_a_unit_scale_map_passes_and_the_absolute_gate_named_it():
    report = summarise([_case(1.16e-4, 1.0)], "onnxruntime", "r50")
    assert report["passed"] and report["failed"] == []

    old = summarise([_case(1.16e-4, 1.0)], "onnxruntime", "r50", rtol={k: 0.0 for k in FP32_RTOL})
    assert not old["passed"]
    [failed] = old["failed"]
    assert (failed["metric"], failed["tensor"], failed["case"]) == ("features", "m2", "trained_photo")
    assert failed["max_abs"] == 1.16e-4 and failed["allowed"] == pytest.approx(1e-4)
    message = failure_message(old)
    assert "features (m2, input trained_photo)" in message and "1.16e-04" in message
    assert "--parity-rtol" in message and "--no-parity-gate" in message
    assert "--parity-rtol" in to_markdown(old) and "failed: features (m2" in to_markdown(old)


def test_an_error_of_the_tensors_own_scale_fails():
    report = summarise([_case(0.5, 1.0)], "onnxruntime", "r50")
    assert [(c["metric"], c["tensor"]) for c in report["failed"]] == [("features", "m2")]
    # a small map: 1e-3 relative of 0.01 adds 1e-5, so 1.16e-4 fails there
    assert not summarise([_case(1.16e-4, 0.01)], "onnxruntime", "r50")["passed"]


class _PerturbedTorch:
    """The model's own outputs (what a perfect backend returns) with m2 changed by `change`."""

    def __init__(self, model, change):
        self.model, self.change = model, change

    def detect(self, images):
        with torch.no_grad():
            scores, boxes, features = self.model.detect_candidates(torch.from_numpy(images))
        maps = [f.numpy().copy() for f in features]
        maps[0] = self.change(maps[0])
        return scores.numpy(), boxes.numpy(), maps

    def keypoints(self, features, rois):
        with torch.no_grad():
            points, point_scores, _ = self.model.landmarks([torch.from_numpy(f) for f in features], torch.from_numpy(rois))
        return points.numpy(), point_scores.numpy()


def test_run_parity_measures_each_map_against_its_own_scale():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = maskface.build_model("tiny").eval()
    # relative noise 1e-5 of each value: max error = 1e-5 * scale <= 1e-4 + 1e-3 * scale at any scale
    noisy = run_parity(model, _PerturbedTorch(model, lambda m: m * (1 + 1e-5)), "stub", max_side=128)
    assert noisy["passed"], noisy["failed"]
    m2 = [c["features_scale"]["m2"] for c in noisy["cases"]]
    assert all(s > 0 for s in m2) and noisy["worst"]["features"] == pytest.approx(1e-5 * max(m2), rel=1e-3)
    # half of the map's own maximum added everywhere: fails on m2, for every input, and only there
    wrong = run_parity(model, _PerturbedTorch(model, lambda m: m + 0.5 * np.abs(m).max()), "stub", max_side=128)
    assert {(c["metric"], c["tensor"]) for c in wrong["failed"]} == {("features", "m2")}
    assert len(wrong["failed"]) == len(wrong["cases"])


def test_build_engines_options_loosen_or_switch_off_the_gate():
    args = parse_args(["--parity-rtol", "0.01", "--no-parity-gate"])
    assert args.parity_rtol == 0.01 and args.no_parity_gate
    assert with_rtol(FP32_RTOL, 0.01) == {k: (0.01 if v else 0.0) for k, v in FP32_RTOL.items()}
    failing = summarise([_case(0.5, 1.0)], "tensorrt", "r50")
    assert trt_parity_exit_code(dict(failing), fp16=False, trained=True) == 1
    report = dict(failing)
    assert trt_parity_exit_code(report, fp16=False, trained=True, gate_off=True) == 0
    assert report["gate"].startswith("off")
