"""maskface_detector (cpu target): detector.onnx in ONNX Runtime, or detector_int8.onnx / detector.onnx in
OpenVINO INT8 / BF16 (config.pbtxt parameters precision, model_file, cpu_threads: stages.graph_model).

Stand-in for the TensorRT plan of the `tensorrt` target (same tensor names): images [B, 3, H, W]
-> scores [B, k], boxes [B, k, 4], m2..m6. Triton's dynamic batcher hands several requests to one
execute(); those of equal image size run as one batch.
"""
import json

import triton_python_backend_utils as pb_utils

from maskface.contracts import DETECTOR_OUTPUTS as OUTPUTS  # scores, boxes, m2..m6


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        from maskface.serving import stages

        params = stages.Parameters.from_model_config(config)
        stages.keep_buffers_in_heap()
        self.stages = stages
        self.graph = stages.graph_model(args, config, "detector")  # precision, model_file, cpu_threads
        self.bounds = stages.InputBounds.from_parameters(params)  # no larger image than preprocess makes

    def _checked_feed(self, request):
        feed = self.stages.input_arrays(pb_utils, request, ["images"])
        self.bounds.check_images(feed["images"])
        return feed

    def execute(self, requests):
        # Errors become responses at once: a kept exception's traceback would hold this frame, and with
        # it the inputs' shared memory, until the cyclic GC ran (the region then grows with every refusal).
        feeds, errors = [], {}
        for i, request in enumerate(requests):
            try:
                feeds.append(self._checked_feed(request))
            except Exception as exc:  # noqa: BLE001
                errors[i] = self.stages.error_response(pb_utils, exc)
                feeds.append(None)
        valid = [i for i, f in enumerate(feeds) if f is not None]
        results = dict(zip(valid, self.graph.run_batched([feeds[i] for i in valid])))
        feeds.clear()
        responses = []
        for i in range(len(requests)):
            result = errors[i] if i in errors else results[i]
            if isinstance(result, Exception):
                responses.append(self.stages.error_response(pb_utils, result))
            elif isinstance(result, dict):
                responses.append(self.stages.output_response(pb_utils, {k: result[k] for k in OUTPUTS}))
            else:
                responses.append(result)
        return responses
