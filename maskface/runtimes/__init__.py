"""Runtimes of the inference pipeline (maskface.pipeline.Runtime): the detector graph, the keypoint
graph and the selection step on one backend each.

torch_runtime   TorchRuntime: the PyTorch model's own stages (maskface.modeling)
ort_runtime     OrtRuntime: detector.onnx + keypoint_head_portable.onnx in ONNX Runtime
triton_runtime  TritonRuntime: the maskface_detector / maskface_keypoints models of a Triton server
bf16_runtime    Bf16Runtime / Bf16Predictor: the PyTorch model's convolutions in BF16 on a CPU with native BF16
(TensorRT engines: export/engine_runner.TensorRTRuntime, which needs the TensorRT runtime.)
"""
