"""maskface_preprocess: encoded JPEG/PNG bytes -> normalised, padded image tensor + scale info.

Logic: maskface.serving.stages.Preprocessor (maskface.preprocess.decode_image / prepare_image).
Limits (max_image_pixels, max_request_bytes) and max_side come from config.pbtxt parameters.
"""
import json
import os
import sys

import triton_python_backend_utils as pb_utils


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
        self.preprocess = stages.Preprocessor.from_parameters(stages.Parameters.from_model_config(config))

    def _handle(self, IMAGE):
        out = self.preprocess(IMAGE)
        return {"images": out.images, "scale_xy": out.scale_xy, "original_size": out.original_size}

    def execute(self, requests):
        return self.stages.respond(pb_utils, requests, ["IMAGE"], self._handle)
