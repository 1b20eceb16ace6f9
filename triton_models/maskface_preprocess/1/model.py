"""maskface_preprocess: encoded JPEG/PNG bytes -> normalised, padded image tensor + scale info.

Logic: maskface.serving.stages.Preprocessor (maskface.preprocess.decode_image / prepare_image).
Limits (max_image_pixels, max_request_bytes) and max_side come from config.pbtxt parameters.
"""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        from maskface.serving import stages

        self.stages = stages
        self.preprocess = stages.Preprocessor.from_parameters(stages.Parameters.from_model_config(config))

    def _handle(self, IMAGE):
        out = self.preprocess(IMAGE)
        return {"images": out.images, "scale_xy": out.scale_xy, "original_size": out.original_size}

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, ["IMAGE"], self._handle)
