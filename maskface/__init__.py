"""MaskFace: multi-task face and landmark detector (Yashunin, Baydasov, Vlasov).

    import maskface
    detector = maskface.load()              # the demo model; or maskface.load("best.pth", device="cpu")
    faces = detector("photo.jpg")           # path, BGR uint8 array, or a list -> Detections
    faces.save("faces.jpg"); faces.to_json()

The model classes are imported on first use, so that light users (preprocessing in a Triton
Python-backend model, the evaluation tools, the CLI's argument parsing) do not pay for torch.
"""
from .api import Detections, FaceDetector, load
from .config import MaskFaceConfig, get_config

__version__ = "0.1.0"
__all__ = ["Detections", "FaceDetector", "MaskFace", "MaskFaceConfig", "build_model", "get_config", "load",
           "__version__"]


def __getattr__(name: str):
    if name in ("MaskFace", "build_model"):
        from .modeling import maskface as _modeling

        return getattr(_modeling, name)
    raise AttributeError(f"module 'maskface' has no attribute {name!r}")
