"""Names shared by the exported graphs, the TensorRT plugin, the engines and the serving stages
(docs/CONTRACTS.md). Written once here; every other module imports them.

Plain constants only: importing this module loads no torch, numpy or onnx.
"""
from __future__ import annotations

#: FPN maps the detector graph returns and the keypoint graph reads, finest first, and their strides.
FEATURE_NAMES = ("m2", "m3", "m4", "m5", "m6")
FEATURE_STRIDES = (4, 8, 16, 32, 64)

DETECTOR_INPUTS = ("images",)
DETECTOR_OUTPUTS = ("scores", "boxes") + FEATURE_NAMES
KEYPOINT_INPUTS = FEATURE_NAMES + ("rois",)
KEYPOINT_OUTPUTS = ("landmarks", "landmark_scores")
HEATMAP_OUTPUT = "heatmaps"
#: Name given to the pooled RoI features [N, C, 14, 14] in both keypoint graphs (after export), so that
#: tests can read that tensor and compare the two variants node by node.
POOLED_NAME = "pooled_rois"

#: The multi-level RoIAlign as an ONNX custom op and as a TensorRT plugin creator
#: (namespace::op_name, version): the ONNX domain is the plugin namespace.
PLUGIN_OP_NAME = "MultiLevelRoIAlign"
PLUGIN_NAMESPACE = "maskface"
PLUGIN_OP_VERSION = 1

#: Shared libraries built from plugins/: the kernel + CPU reference (ctypes), and that plus the
#: TensorRT plugin glue (what TensorRT and tritonserver load).
KERNEL_LIBRARY_NAME = "libmaskface_mlra.so"
PLUGIN_LIBRARY_NAME = "libmaskface_plugins.so"
#: Environment variable naming a built plugin library.
PLUGIN_LIBRARY_ENV = "MASKFACE_PLUGIN_LIBRARY"
