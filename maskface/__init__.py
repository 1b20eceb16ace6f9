"""MaskFace: multi-task face and landmark detector (Yashunin, Baydasov, Vlasov)."""
from .config import MaskFaceConfig, get_config
from .modeling.maskface import MaskFace, build_model

__version__ = "0.1.0"
__all__ = ["MaskFace", "MaskFaceConfig", "build_model", "get_config", "__version__"]
