"""export/int8_finetune.py: the distillation loss by hand; fine-tuning must take a planted bias error out of
an INT8 graph, keep the graph's contract, and resume after a crash as if uninterrupted.

The fine-tuning runs on a small ReLU network whose tensors carry the detector export's names (the seeded
tiny MaskFace is no subject for it: its GroupNorms amplify a single rounding flip so much that its INT8
outputs jump with every step, whatever the step does); that the names are the real detector's is checked
on conftest's tiny_int8.
"""
from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export import int8_finetune
from export.int8_finetune import FinetuneSettings, distillation_terms, finetune, head_outputs
from export.qdq_torch import QdqGraph
from export.quantize_int8 import Int8Settings, calibrate, calibration_graph, io_contract, network_inputs, quantize_graph
from tests.export.conftest import synthetic_records


class _Head(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.cls, self.box = torch.nn.Conv2d(channels, 3, 1), torch.nn.Conv2d(channels, 12, 1)

    def forward(self, levels):
        return ([torch.sigmoid(self.cls(f)).flatten(1) for f in levels], [self.box(f).flatten(1) for f in levels])


class _Trunk(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, 2, 1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(channels, channels, 3, 2, 1), torch.nn.ReLU())
        self.downs = torch.nn.ModuleList(torch.nn.Conv2d(channels, channels, 3, 2, 1) for _ in range(4))

    def forward(self, images):
        levels = [self.stem(images)]
        for down in self.downs:
            levels.append(torch.relu(down(levels[-1])))
        return levels


class SmallDetector(torch.nn.Module):
    """Five levels (strides 4..64) and a shared 1x1 head: exported, its nodes and tensors get the names
    the loss reads (/detection_head/cls_1/Conv_output_0, m2..m6), its trunk the scope /backbone/."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.backbone, self.detection_head = _Trunk(channels), _Head(channels)

    def forward(self, images):
        levels = self.backbone(images)
        scores, boxes = self.detection_head(levels)
        return (torch.cat(scores, 1), torch.cat(boxes, 1), *levels)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from maskface.config import get_config

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("small_int8")
    detector = out / "detector.onnx"
    torch.onnx.export(SmallDetector().eval(), torch.zeros(1, 3, 128, 128), str(detector), input_names=["images"],
                      output_names=["scores", "boxes", *int8_finetune.FEATURES],
                      dynamic_axes={"images": {2: "height", 3: "width"}}, opset_version=17, dynamo=False)
    records = synthetic_records(out)
    input_cfg = get_config("tiny").input
    feeds = [{"images": x} for x in network_inputs(records, input_cfg, max_side=128, progress=False)]
    settings = Int8Settings(method="minmax")
    prepared, _ = calibration_graph(detector, out, feeds, settings)
    cache = calibrate(prepared, feeds, out / "calibration.json", settings, progress=False)
    detector_int8 = quantize_graph(prepared, out / "detector_int8.onnx", cache, settings, detector, feeds)
    return SimpleNamespace(detector=detector, detector_int8=detector_int8, records=records, input_cfg=input_cfg)


def _outputs(score_logit: float, box: tuple, feature: float, level0_logit: float | None = None) -> dict:
    """Head outputs of 1 anchor at 1 position per level: level 0 gets `level0_logit`, the others -30
    (no face), every level the box deltas `box` and the feature value `feature`."""
    out = {}
    for i, (suffix, m) in enumerate(zip(int8_finetune.LEVEL_SUFFIXES, int8_finetune.FEATURES)):
        logit = (level0_logit if level0_logit is not None else score_logit) if i == 0 else -30.0
        out[f"/detection_head/cls{suffix}/Conv_output_0"] = torch.full((1, 1, 1, 1), logit, dtype=torch.float64)
        out[f"/detection_head/box{suffix}/Conv_output_0"] = torch.tensor(box, dtype=torch.float64).reshape(1, 4, 1, 1)
        out[m] = torch.full((1, 1, 1, 1), feature if i == 0 else 1.0, dtype=torch.float64)
    return out


def test_distillation_terms_by_hand():
    teacher = _outputs(0.0, (0.0, 0.0, 0.0, 0.0), 1.0)
    same = distillation_terms(teacher, teacher)
    assert all(abs(float(v)) < 1e-9 for v in same.values())
    student = _outputs(0.0, (0.5, 0.0, 0.0, 0.0), 2.0, level0_logit=1.0)
    terms = distillation_terms(student, teacher)
    p = 0.5  # the teacher's face probability at level 0; the other levels' (sigmoid(-30)) is ~1e-13
    # each term is divided by the teacher's face mass, p = 0.5, floored at 1 (an image without faces)
    # KL(p || sigmoid(1)) = p log(p / s) + (1 - p) log((1 - p) / (1 - s))
    s = 1 / (1 + math.exp(-1.0))
    kl = p * math.log(p / s) + (1 - p) * math.log((1 - p) / (1 - s))
    assert float(terms["score"]) == pytest.approx(kl, rel=1e-6)
    # boxes: p * 0.5^2 * (4 x stride 4)^2, at level 0 only (elsewhere p ~ 0)
    assert float(terms["box"]) == pytest.approx(p * 0.25 * 16 ** 2, rel=1e-6)
    # features: level 0 off by 1 against a mean square of 1, averaged over the 5 levels
    assert float(terms["feature"]) == pytest.approx(1 / 5, rel=1e-6)


def _settings(**overrides) -> FinetuneSettings:
    return FinetuneSettings(**{**dict(steps=8, images=3, lr=0.05, checkpoint_every=4, eval_every=4, max_side=128),
                               **overrides})


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_finetuning_takes_out_a_planted_bias_error(small, tmp_path):
    model = onnx.load(str(small.detector_int8))
    made = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == "/backbone/downs.1/Conv")
    bias_name, weight_name = made[conv.input[2]].input[0], made[conv.input[1]].input[0]
    inits = {i.name: i for i in model.graph.initializer}
    bias, weight = numpy_helper.to_array(inits[bias_name]), numpy_helper.to_array(inits[weight_name])
    # +-20 bias units (a unit: one bias step x sqrt(fan-in)) on alternate channels
    planted = np.round(20 * math.sqrt(weight[0].size) * np.where(np.arange(bias.size) % 2 == 0, 1, -1)).astype(np.int32)
    inits[bias_name].CopyFrom(numpy_helper.from_array(bias + planted, bias_name))
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(model, str(corrupted))
    out = tmp_path / "finetuned.onnx"
    # Steps of up to 1 unit: even this small network's loss jumps by a fifth between evaluations once
    # the biases are near their old values, so the best evaluated step is what is checked.
    summary = finetune(corrupted, small.detector, out, small.records, small.records, small.input_cfg,
                       _settings(steps=40, lr=1.0, train_weights=False, checkpoint_every=100, eval_every=5),
                       progress=False)
    left = _initializers(out)[bias_name] - bias
    assert np.abs(left).mean() < 0.75 * np.abs(planted).mean(), np.abs(left).mean() / np.abs(planted).mean()
    assert np.all(np.sign(left) == np.sign(planted))  # moved back, not past
    before, after = sum(summary.held_out_before.values()), sum(summary.held_out_after.values())
    assert after < 0.85 * before, (summary.held_out_before, summary.held_out_after)
    assert summary.weights_changed == 0  # biases only
    assert summary.best_step > 0


def test_a_run_that_only_hurts_writes_the_input_graph(small, tmp_path):
    # steps of 5 quantisation steps per iteration throw the integers about: every evaluated step is worse
    out = tmp_path / "finetuned.onnx"
    summary = finetune(small.detector_int8, small.detector, out, small.records, small.records, small.input_cfg,
                       _settings(steps=4, lr=5.0, eval_every=2), progress=False)
    assert summary.best_step == 0
    assert summary.held_out_after == pytest.approx(summary.held_out_before)
    before = _initializers(small.detector_int8)
    for name, values in _initializers(out).items():
        np.testing.assert_array_equal(values, before[name], err_msg=name)


def test_the_held_out_loss_is_logged_and_plotted(small, tmp_path):
    log = tmp_path / "log.jsonl"
    finetune(small.detector_int8, small.detector, tmp_path / "out.onnx", small.records, small.records[:1],
             small.input_cfg, _settings(steps=5, eval_every=2), progress=False, log_path=log)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 5] and rows[0]["train_loss"] is None
    pytest.importorskip("matplotlib")
    assert int8_finetune.plot_log(log, tmp_path / "loss.png").stat().st_size > 1000


def test_the_finetuned_graph_keeps_the_int8_graphs_contract(small, tmp_path):
    out = tmp_path / "detector_int8.onnx"
    # no held-out images: the last step's parameters are written, whatever they do
    summary = finetune(small.detector_int8, small.detector, out, small.records, [], small.input_cfg,
                       _settings(lr=0.5), progress=False)
    assert summary.best_step == 8 and 0 < summary.weights_changed < 1
    onnx.checker.check_model(onnx.load(str(out)))
    assert io_contract(out) == io_contract(small.detector_int8)
    old, new = onnx.load(str(small.detector_int8)), onnx.load(str(out))
    assert [(n.op_type, list(n.input)) for n in old.graph.node] == [(n.op_type, list(n.input)) for n in new.graph.node]
    old_values = _initializers(small.detector_int8)
    for init in new.graph.initializer:  # scales, zero points and FP32 layers stay; integers may move
        if init.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.INT32):
            np.testing.assert_array_equal(numpy_helper.to_array(init), old_values[init.name], err_msg=init.name)


def test_a_crashed_run_resumes_as_if_uninterrupted(small, tmp_path, monkeypatch):
    args = (small.records, small.records[:1], small.input_cfg, _settings(lr=0.5, eval_every=3))
    whole = tmp_path / "whole.onnx"
    finetune(small.detector_int8, small.detector, whole, *args, tmp_path / "whole.pt", progress=False,
             log_path=tmp_path / "whole.jsonl")

    real, calls = int8_finetune.distillation_terms, {"training": 0}

    def crash_on_the_seventh_step(student, teacher):
        if torch.is_grad_enabled():
            calls["training"] += 1
            if calls["training"] == 7:
                raise KeyboardInterrupt("simulated crash")
        return real(student, teacher)

    monkeypatch.setattr(int8_finetune, "distillation_terms", crash_on_the_seventh_step)
    resumed = tmp_path / "resumed.onnx"
    with pytest.raises(KeyboardInterrupt):
        finetune(small.detector_int8, small.detector, resumed, *args, tmp_path / "resumed.pt", progress=False,
                 log_path=tmp_path / "resumed.jsonl")
    assert not resumed.exists()
    assert torch.load(tmp_path / "resumed.pt", weights_only=True)["step"] == 4  # the last checkpoint
    monkeypatch.setattr(int8_finetune, "distillation_terms", real)
    finetune(small.detector_int8, small.detector, resumed, *args, tmp_path / "resumed.pt", progress=False,
             log_path=tmp_path / "resumed.jsonl")
    # the step-6 line logged before the crash was dropped on resuming from step 4, then logged again
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert steps == [0, 3, 6, 8]
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    a, b = _initializers(whole), _initializers(resumed)
    for name, values in a.items():
        np.testing.assert_array_equal(values, b[name], err_msg=name)
    states = [torch.load(tmp_path / f"{n}.pt", weights_only=True)["student"] for n in ("whole", "resumed")]
    assert states[0].keys() == states[1].keys()
    for name, values in states[0].items():  # the last step's parameters too, not only the best step's
        assert torch.equal(values, states[1][name]), name
    start = QdqGraph(onnx.load(str(small.detector_int8)), head_outputs()).state_dict()
    assert any(not torch.equal(values, start[name]) for name, values in states[0].items())  # it did train


def test_a_state_from_other_settings_is_not_resumed(small, tmp_path, capsys):
    args = (small.records, [], small.input_cfg)
    finetune(small.detector_int8, small.detector, tmp_path / "a.onnx", *args, _settings(steps=2), tmp_path / "s.pt",
             progress=False)
    capsys.readouterr()
    finetune(small.detector_int8, small.detector, tmp_path / "b.onnx", *args, _settings(steps=2, seed=1),
             tmp_path / "s.pt", progress=False)
    assert "from other inputs or settings; starting over" in capsys.readouterr().out


def test_command_line_errors_say_what_to_do(small, tmp_path, capsys):
    assert int8_finetune.main(["--int8-dir", str(tmp_path), "--no-progress"]) == 2
    assert "quantize_int8.py --out" in capsys.readouterr().err
    folder = tmp_path / "int8"
    folder.mkdir()
    for path in (small.detector, small.detector_int8):
        shutil.copy2(path, folder / path.name)
    assert int8_finetune.main(["--int8-dir", str(folder), "--out", str(folder), "--no-progress"]) == 2
    assert "--out must differ" in capsys.readouterr().err
    assert int8_finetune.main(["--int8-dir", str(folder), "--data", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "maskface demo-data --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        int8_finetune.parse_args(["--int8-dir", str(folder), "--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err


def test_the_loss_reads_tensors_the_detector_graph_has(tiny_int8):
    produced = {o for n in onnx.load(str(tiny_int8.build.detector)).graph.node for o in n.output}
    assert set(head_outputs()) <= produced
