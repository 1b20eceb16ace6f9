"""export/quantize_int8.py on the seeded tiny model and synthetic images (no runs/ needed; the build is
conftest's tiny_int8).

The INT8 graphs keep the FP32 graphs' I/O contract, quantise the convs of the backbone / FPN / context
(and, when asked, the keypoint conv tower) with per-channel weights, leave the detection head and the
keypoint head's last layers in FP32, and stay close to FP32 on an image they were calibrated with.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from export.quantize_int8 import io_contract, main


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_graphs_keep_the_fp32_io_contract(tiny_int8):
    b = tiny_int8.build
    assert b.keypoint_head_int8 is not None
    for fp32, q in ((b.detector, b.detector_int8), (b.keypoint_head, b.keypoint_head_int8)):
        onnx.checker.check_model(onnx.load(str(q)))
        assert io_contract(q) == io_contract(fp32)
        # and ONNX Runtime runs it with the FP32 graph's feeds
        assert [i.name for i in ort.InferenceSession(str(q)).get_inputs()] == \
               [i.name for i in onnx.load(str(fp32)).graph.input]


def _conv_weight_dq(model, conv):
    """The DequantizeLinear producing the conv's weight, or None when the weight is a float initializer."""
    node = producers(model).get(conv.input[1])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def test_backbone_convs_are_quantised_per_channel(tiny_int8):
    model = onnx.load(str(tiny_int8.build.detector_int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantised = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(("/backbone/", "/fpn/", "/context."))]
    assert len(quantised) > 20
    for conv in quantised:
        dq = _conv_weight_dq(model, conv)
        assert dq is not None, conv.name
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8, conv.name
        # one scale per output channel, along axis 0 (the weight's output-channel axis)
        assert scale.shape == (weight.shape[0],), conv.name
        assert {a.name: a.i for a in dq.attribute}.get("axis", 1) == 0, conv.name
        # the conv's data input is dequantised UINT8 (U8S8: its zero point is a uint8)
        data = producers(model)[conv.input[0]]
        assert data.op_type == "DequantizeLinear", conv.name
        assert inits[data.input[2]].dtype == np.uint8, conv.name
        # bias correction (on by default) gave every quantised conv an INT32 bias with scale
        # input scale x weight scale, the bias-free FPN / context convs too
        bias = producers(model)[conv.input[2]]
        assert bias.op_type == "DequantizeLinear" and inits[bias.input[0]].dtype == np.int32, conv.name
        np.testing.assert_allclose(inits[bias.input[1]], inits[data.input[1]] * scale, rtol=1e-6, err_msg=conv.name)
    assert any(c.input[2].endswith("_bias_correction") for c in quantised)


def test_sensitive_nodes_stay_fp32(tiny_int8):
    det = onnx.load(str(tiny_int8.build.detector_int8))
    head = [n for n in det.graph.node if n.name.startswith("/detection_head/") and n.op_type == "Conv"]
    assert len(head) == 10  # score + box convs of 5 levels
    made = producers(det)
    for conv in head:
        assert _conv_weight_dq(det, conv) is None, conv.name
        src = made.get(conv.input[0])
        assert src is None or src.op_type not in ("DequantizeLinear", "QuantizeLinear"), conv.name
    # nothing after the convs (scores, decoding, TopK) is quantised: QDQ nodes only feed scoped nodes
    consumers = {i: n for n in det.graph.node for i in n.input}
    for node in det.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] in consumers:
            assert consumers[node.output[0]].name.startswith(("/backbone/", "/fpn/", "/context.")), node.name
    kp = onnx.load(str(tiny_int8.build.keypoint_head_int8))
    for node in kp.graph.node:
        if node.op_type == "ConvTranspose":  # the last layer: heatmap upsampling stays FP32
            assert _conv_weight_dq(kp, node) is None
            assert producers(kp)[node.input[0]].op_type != "DequantizeLinear"
    kp_convs = [n for n in kp.graph.node if n.op_type == "Conv"]
    assert kp_convs and all(_conv_weight_dq(kp, n) is not None for n in kp_convs)


def test_int8_detector_is_close_to_fp32(tiny_int8):
    from maskface.preprocess import prepare_image
    import cv2

    image = prepare_image(cv2.imread(str(tiny_int8.records[0].image_path)), tiny_int8.model.cfg.input, 640).image[None]
    fp32 = ort.InferenceSession(str(tiny_int8.build.detector)).run(None, {"images": image})
    q = ort.InferenceSession(str(tiny_int8.build.detector_int8)).run(None, {"images": image})
    names = [o.name for o in onnx.load(str(tiny_int8.build.detector)).graph.output]
    # Each quantised tensor is rounded to 1/255 of its calibrated range (this image is in the
    # calibration set, so nothing clips), but a seeded network's GroupNorms rescale low-variance groups
    # and amplify that rounding: measured here, the mean error of a map is 8-15 % of its mean |value|
    # (the earlier R50 measurement on seeded weights: 12-14 %). A trained model does better (the demo
    # report). 25 % still fails what breaks quantisation: a map of zeros or a wrong scale (>= 50 %).
    for name, a, b in zip(names, fp32, q):
        if name in ("m2", "m3", "m4", "m5", "m6"):
            relative = float(np.abs(a - b).mean() / np.abs(a).mean())
            assert relative <= 0.25, (name, relative)
    # scores: probabilities, compared sorted (the order of near-equal candidates may change)
    assert np.abs(np.sort(fp32[0][0]) - np.sort(q[0][0])).max() <= 0.05
    assert q[1].shape == fp32[1].shape


def test_missing_data_says_how_to_build_it(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nowhere/train/label.txt not found" in err
    assert "maskface demo-data --out" in err and "scripts/train_demo.sh" in err


def test_each_step_after_quantisation_can_be_turned_off():
    from export.quantize_int8 import parse_args

    on = parse_args([])
    assert on.weight_rounding and on.bias_correction and on.equalize
    off = parse_args(["--no-weight-rounding", "--no-bias-correction", "--no-equalize"])
    assert not (off.weight_rounding or off.bias_correction or off.equalize)
