"""maskface_postprocess: boxes and landmarks from network-input pixels back to original pixels.

Logic: maskface.serving.stages.to_original_pixels (maskface.preprocess.Prepared, the mapping the
in-process predictors use).
"""
import json

import triton_python_backend_utils as pb_utils

INPUTS = ["rois", "det_scores", "landmarks", "landmark_scores", "scale_xy", "original_size"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        from maskface.serving import stages

        self.stages = stages
        self.bounds = stages.InputBounds.from_parameters(stages.Parameters.from_model_config(config))

    def _handle(self, **inputs):
        return self.stages.to_original_pixels(**inputs, bounds=self.bounds)

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, INPUTS, self._handle)
