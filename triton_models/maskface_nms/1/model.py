"""maskface_nms: the detector's top-k candidates -> kept boxes as keypoint-head ROIs.

Logic: maskface.serving.stages.CandidateSelector (maskface.postprocess.select_detections:
score threshold, NMS, max detections; ties broken by candidate index). Thresholds and limits are
config.pbtxt parameters.
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
