"""maskface_postprocess: boxes and landmarks from network-input pixels back to original pixels.

Logic: maskface.serving.stages.to_original_pixels (maskface.preprocess.Prepared, the mapping the
in-process predictors use).
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

INPUTS = ["rois", "det_scores", "landmarks", "landmark_scores", "scale_xy", "original_size"]


def _import_path(config):
    """Put the checkout that rendered this repository (parameter maskface_root) first on sys.path;
    without it the installed maskface is used. `import maskface` is light (the model is lazy)."""
    root = config.get("parameters", {}).get("maskface_root", {}).get("string_value", "")
    if root and os.path.isfile(os.path.join(root, "maskface", "__init__.py")) and root not in sys.path:
        sys.path.insert(0, root)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _import_path(config)
        from maskface.serving import stages

        self.stages = stages
        self.bounds = stages.InputBounds.from_parameters(stages.Parameters.from_model_config(config))

    def _handle(self, **inputs):
        return self.stages.to_original_pixels(**inputs, bounds=self.bounds)

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, INPUTS, self._handle)
