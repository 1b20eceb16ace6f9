"""export/int8_robust_finetune.py: its outputs are the exported graph's tensors of the same names (ONNX Runtime
as the reference), its noise sits at the convs the INT8 graph quantises and has one step's size, and a stopped
run resumes to the same weights as an uninterrupted one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export import int8_robust_finetune as robust
from maskface import build_model
from tests.export.conftest import synthetic_records


def test_pyramid_outputs_are_the_exported_graphs_tensors(tmp_path):
    """Reference: ONNX Runtime on the exported detector, asked for the tensors int8_finetune distils."""
    from export.export_onnx import export_detector
    from export.int8_finetune import Teacher, head_outputs

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    path = export_detector(model, tmp_path / "detector.onnx")
    image = np.random.default_rng(0).standard_normal((1, 3, 96, 128)).astype(np.float32)
    expected = Teacher(path)(image)
    with torch.no_grad():
        got = robust.pyramid_outputs(model, torch.from_numpy(image))
    assert sorted(got) == sorted(head_outputs())
    for name in head_outputs():
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_noise_sits_at_the_convs_whose_inputs_the_int8_graph_quantises(tiny_int8):
    """Reference: export/quantize_int8.py's graph of the same model; a Conv there whose input comes from a
    DequantizeLinear is a quantised activation. The detection and keypoint heads stay FP32 in both."""
    graph = onnx_graph(tiny_int8.build.detector_int8)
    producer = {out: node for node in graph.node for out in node.output}
    quantised = {module_name(node.name) for node in graph.node if node.op_type == "Conv"
                 and producer.get(node.input[0]) is not None and producer[node.input[0]].op_type == "DequantizeLinear"}
    hooked = {name for name, _ in robust.quantised_convs(tiny_int8.model)}
    assert len(hooked) > 30 and hooked == quantised
    assert not any(name.startswith(("detection_head", "keypoint_head")) for name in hooked)


def onnx_graph(path):
    import onnx

    return onnx.load(str(path)).graph


def module_name(node_name: str) -> str:
    """torch.onnx's scope of a node as a module path: '/backbone/stages.0/stages.0.1/conv/conv.0/Conv' names
    each level by its path below the previous one's parent -> 'backbone.stages.0.1.conv.0'."""
    parts, previous = [], None
    for part in node_name.split("/")[1:-1]:
        parts.append(part[len(previous) + 1:] if previous and part.startswith(previous + ".") else part)
        previous = part
    return ".".join(parts)


def test_uint8_range_by_hand():
    # quantiles of 0..999 at 1e-4 / 0.9999 by linear interpolation: 0.0999 (widened to 0) and 998.9001
    low, high = robust.uint8_range(torch.arange(1000, dtype=torch.float32))
    assert low == 0.0 and high == pytest.approx(998.9001, abs=1e-3)
    low, high = robust.uint8_range(-torch.arange(1, 1001, dtype=torch.float32))
    assert high == 0.0 and low == pytest.approx(-1000 + 0.0999, abs=1e-3)


class _Toy(torch.nn.Module):
    """backbone / fpn / context of one conv each, and a head conv that must stay without noise."""

    def __init__(self):
        super().__init__()
        self.backbone, self.fpn = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)
        self.context = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 1)])
        self.detection_head = torch.nn.Conv2d(4, 2, 1)

    def context_features(self, x):
        return [self.context[0](torch.relu(self.fpn(torch.relu(self.backbone(x)))))]


def test_noise_is_one_step_wide_clipped_to_the_range_and_off_by_default():
    torch.manual_seed(0)
    model = _Toy()
    x = torch.randn(1, 3, 32, 32) * 3
    with torch.no_grad():
        plain = model.context_features(x)[0]
    noise = robust.ActivationNoise(model)
    assert noise.names == ["backbone", "fpn", "context.0"]
    ranges = noise.calibrate(model, [x])
    assert ranges["backbone"] == pytest.approx(robust.uint8_range(x))
    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, i: seen.__setitem__("noisy", i[0]))
    with torch.no_grad():
        assert torch.equal(model.context_features(x)[0], plain)  # disabled: the model as it was
        noise.enabled = True
        model.context_features(x)
    low, high = ranges["backbone"]
    step = (high - low) / 255
    error = seen["noisy"] - x.clamp(low, high)
    assert error.abs().max() <= step / 2 + 1e-6
    assert abs(float(error.mean())) < step / 20  # centred: 3,072 draws of a uniform of width `step`
    assert float(error.std()) == pytest.approx(step / np.sqrt(12), rel=0.1)
    noise.remove()
    with torch.no_grad():
        assert torch.equal(model.context_features(x)[0], plain)


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    from maskface.checkpoint import read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(checkpoint, model, model.cfg)
    records = synthetic_records(tmp_path)
    settings = robust.RobustSettings(steps=4, calibration_images=2, checkpoint_every=1, eval_every=2, max_side=96,
                                     lr=1e-3)

    whole = robust.robust_finetune(checkpoint, tmp_path / "whole", records[:2], records[2:], settings, progress=False)
    assert whole["steps"] == 4 and (tmp_path / "whole" / robust.FINAL_FILE).is_file()

    # a stop requested during step 3 (what the SIGTERM / SIGINT handler does: it sets the flag; no real signal
    # here, since os.kill reaches whichever of the suite's native threads the kernel picks)
    class Recorded(robust._StopRequest):
        last = None

        def __enter__(self):
            Recorded.last = self
            return super().__enter__()

    calls = {"n": 0}
    original = robust.rng_for

    def stop_after_two(seed, step):
        calls["n"] += 1
        if calls["n"] == 3:
            Recorded.last._handle(15, None)
        return original(seed, step)

    monkeypatch.setattr(robust, "_StopRequest", Recorded)
    monkeypatch.setattr(robust, "rng_for", stop_after_two)
    part = robust.robust_finetune(checkpoint, tmp_path / "split", records[:2], records[2:], settings, progress=False)
    assert part["steps"] == 3 and not (tmp_path / "split" / robust.FINAL_FILE).exists()
    monkeypatch.setattr(robust, "rng_for", original)
    rest = robust.robust_finetune(checkpoint, tmp_path / "split", records[:2], records[2:], settings, progress=False)
    assert rest["steps"] == 4
    a = read_checkpoint(tmp_path / "whole" / robust.FINAL_FILE)["model"]
    b = read_checkpoint(tmp_path / "split" / robust.FINAL_FILE)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if not torch.equal(a[k], model.state_dict()[k])]
    assert changed and all(k.startswith(robust.TRAINED_PARTS) for k in changed)


def test_the_command_says_what_is_missing(tmp_path, capsys):
    assert robust.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "maskface demo-data --out" in capsys.readouterr().err
    assert robust.main(["--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        robust.main(["--steps", "0"])
