"""maskface_keypoints (cpu target): the portable keypoint-head graph in ONNX Runtime at every precision
(parameter precision picks the graph; stages.graph_model).

Stand-in for the TensorRT plan of the `tensorrt` target (same tensor names): m2..m6 + rois [N, 5]
-> landmarks [N, K, 2], landmark_scores [N, K]. N = 0 gives empty outputs. The graph file and
the thread count are config.pbtxt parameters (model_file, cpu_threads).
"""
import json

import triton_python_backend_utils as pb_utils

from maskface.contracts import KEYPOINT_INPUTS as INPUTS  # m2..m6, rois


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        from maskface.serving import stages

        params = stages.Parameters.from_model_config(config)
        stages.keep_buffers_in_heap()
        self.stages = stages
        self.graph = stages.graph_model(args, config, "keypoints")  # precision, model_file, cpu_threads
        self.bounds = stages.InputBounds.from_parameters(params)  # at most max_detections ROIs

    def _handle(self, **feeds):
        self.stages.check_keypoint_inputs(feeds, self.bounds)
        out = self.graph.run(feeds)
        return {"landmarks": out["landmarks"], "landmark_scores": out["landmark_scores"]}

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, INPUTS, self._handle)
