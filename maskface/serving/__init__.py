"""Serving: the exported graphs in-process and behind a real Triton server.

onnx_graphs   old name of maskface.runtimes.ort_runtime (the pipeline in ONNX Runtime, in-process)
stages        the logic of the Triton Python-backend models (triton_models/*/1/model.py)
repository    render triton_models/ for the `cpu` or `tensorrt` target
server        launch / stop tritonserver (bundled in nvidia-pytriton or a system install)
client        MaskFaceClient: HTTP or gRPC through tritonclient
commands      `maskface serve` and `maskface client`

Nothing is imported here: each module pulls in only what it needs (tritonclient, onnxruntime, torch).
"""
