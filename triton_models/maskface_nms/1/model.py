"""maskface_nms: the detector's top-k candidates -> kept boxes as keypoint-head ROIs.

Logic: maskface.serving.stages.CandidateSelector (maskface.postprocess.select_detections:
score threshold, NMS, max detections; ties broken by candidate index). Thresholds and limits are
config.pbtxt parameters.
"""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        import torch

        from maskface.serving import stages

        params = stages.Parameters.from_model_config(config)
        torch.set_num_threads(max(1, params.get_int("torch_threads", 1)))
        self.stages = stages
        self.select = stages.CandidateSelector.from_parameters(params)

    def _handle(self, scores, boxes):
        rois, det_scores = self.select(scores, boxes)
        return {"rois": rois, "det_scores": det_scores}

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, ["scores", "boxes"], self._handle)
