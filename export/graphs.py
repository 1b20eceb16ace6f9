"""Old name of export/export_modules.py (the torch modules that define the exported graphs), kept so
that existing imports work."""
from export.export_modules import *  # noqa: F401,F403
from export.export_modules import DetectorGraph, KeypointGraph, portable_multilevel_roi_align  # noqa: F401
