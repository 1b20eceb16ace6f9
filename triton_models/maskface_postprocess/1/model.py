"""maskface_postprocess: boxes and landmarks from network-input pixels back to original pixels.

Logic: maskface.serving.stages.to_original_pixels (maskface.preprocess.Prepared, the mapping the
in-process predictors use).
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils

INPUTS = ["rois", "det_scores", "landmarks", "landmark_scores", "scale_xy", "original_size"]


def _import_maskface(config):
    """Make maskface.* importable without running maskface/__init__.py, which loads the PyTorch
    model code (seconds of start-up per stub); the stages import only what they use."""
    import importlib.util
    import types

    if "maskface" in sys.modules:
        return
    # The checkout that rendered this repository (parameter maskface_root), else the installed one.
    root = config.get("parameters", {}).get("maskface_root", {}).get("string_value", "")
    if root and os.path.isfile(os.path.join(root, "maskface", "__init__.py")):
        locations = [os.path.join(root, "maskface")]
    else:
        spec = importlib.util.find_spec("maskface")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"maskface is not importable and maskface_root={root!r} does not hold it")
        locations = list(spec.submodule_search_locations)
    package = types.ModuleType("maskface")
    package.__path__ = locations
    package.__file__ = os.path.join(locations[0], "__init__.py")
    sys.modules["maskface"] = package


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        _import_maskface(config)
        from maskface.serving import stages

        self.stages = stages

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, INPUTS, self.stages.to_original_pixels)
