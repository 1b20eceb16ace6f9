"""maskface_pipeline (cpu target): the whole pipeline in one process, IMAGE in, faces out.

Logic: maskface.serving.fused_stage.FusedPipeline (the preprocess limits, maskface.pipeline.Pipeline
over the detector and keypoint graphs that maskface_detector / maskface_keypoints run). Graph files,
precision, threads, limits and thresholds are config.pbtxt parameters.
"""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        import torch

        from maskface.serving import fused_stage, stages

        params = stages.Parameters.from_model_config(config)
        torch.set_num_threads(max(1, params.get_int("torch_threads", 1)))  # only the NMS runs in torch
        stages.keep_buffers_in_heap()
        self.stages = stages
        self.pipeline = fused_stage.FusedPipeline.from_model_config(args, config)

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, ["IMAGE"], self.pipeline)
