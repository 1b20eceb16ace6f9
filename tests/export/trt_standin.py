"""A stand-in for the ``tensorrt`` Python module that records every call (tests only).

``make_tensorrt(version)`` returns a module object (FakeTensorRT) with the parts of the TensorRT 10 / 11
API that export/tensorrt_build.py and export/engine_runner.py use, shaped like the real bindings. Each
part is a module-level class below (Builder, NetworkDefinition, OnnxParser, BuilderConfig,
OptimizationProfile, Runtime, CudaEngine, ExecutionContext, PluginRegistry) holding its module; what
they refuse is decided by the pure rule functions of "the documented limits" section:

* builder side: Builder, network (inputs / layers read from the ONNX file with onnx, so layer names
  are the ONNX node names as TensorRT's parser gives them), OnnxParser (a node outside the default
  ONNX domain becomes a plugin only if the registry holds a creator for its op type +
  ``plugin_version`` / ``plugin_namespace`` attributes, as in TensorRT; otherwise a parser error),
  builder config (flags, memory pools, profiles validated like TensorRT: min <= opt <= max, ranks,
  zero dimensions optionally refused), build_serialized_network -> a "plan" that is JSON describing
  what was built. Version differences: TRT 11 has no BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS
  and no ILayer.precision / set_output_type; on TRT 10 a strongly typed network refuses them.
* plugin registry: load_library(path) registers the MultiLevelRoIAlign creator for an existing file.
* runtime side: Runtime.deserialize_cuda_engine(plan JSON) -> engine / execution context that
  "execute" on CPU memory: inputs are read from the bound addresses, ``module.executor(inputs)``
  (numpy in, numpy out) computes the outputs, which are written to the bound addresses or through
  an IOutputAllocator for names in ``module.data_dependent``.

Every call is appended to ``module.calls`` as a tuple (name, *arguments), and every public attribute
read on a fake object (class Recorded) or on the module to ``module.accessed`` as (pybind11 class
name, attribute), so that tests/export/test_conformance.py can check each one against TensorRT's real binding sources.

It refuses what real TensorRT documents it refuses (the citations are to shared/third_party):

* TopK with K > 3840 or a K that is not a constant: "Currently only values of K up to 3840 are
  supported." (tensorrt/10.16/include/NvInfer.h:8458, tensorrt/11.1/include/NvInfer.h:8595);
* Resize modes outside the ONNX parser's list (onnx-tensorrt/operators.md, Resize row);
* a plugin node whose attributes are not fields of the registered creator;
* profiles: IOptimizationProfile::setDimensions (tensorrt/11.1/include/NvInferRuntime.h:2580-2598)
  (1) equal ranks, (2) 0 <= min <= opt <= max, (3) static network dims equal in min / opt / max
  (checked at build time, as TensorRT defers it); addOptimizationProfile must be called for a network
  with dynamic inputs (NvInfer.h:10832 of 11.1) and every dynamic input needs a shape;
* BuilderFlag.FP16 with a strongly typed network (NvInfer.h:12109-12113 of 10.16: "Setting layer
  precision and layer output types is not allowed"); TRT 11 has no FP16 flag at all.

The runtime side executes "engines" with an executor object (module.executor, see OnnxExecutor and
FormulaExecutor below); tests compare its results with an independent reference, never with the
session the executor itself runs.
"""
from __future__ import annotations

import ctypes
import enum
import functools
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx

PLUGIN_CREATORS = {("MultiLevelRoIAlign", "1", "maskface")}
# The creator's fields (plugins/src/mlra_plugin.cpp, MlraCreator): what the parser may pass from the node.
PLUGIN_FIELDS = {"output_size", "sampling_ratio", "canonical_level", "canonical_size", "min_level", "max_level",
                 "aligned", "spatial_scales"}
TOPK_MAX_K = 3840  # NvInfer.h (10.16:8458, 11.1:8595): "Currently only values of K up to 3840 are supported."
# onnx-tensorrt/operators.md, Resize row.
RESIZE_MODES = {"nearest", "linear"}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}


class OnnxExecutor:
    """Runs a stand-in engine with ONNX Runtime on the given graph (its own session): engines whose
    inputs include ``images`` use ``detector``, the others ``keypoints``."""

    def __init__(self, detector: str | Path, keypoints: str | Path):
        import onnxruntime as ort

        self.sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                         for name, path in (("detector", detector), ("keypoints", keypoints))}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions["detector" if "images" in inputs else "keypoints"]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, inputs)))


class FormulaExecutor:
    """Outputs computed by a formula a test can redo by hand, so that the runner's binding of shapes,
    addresses and dtypes is checked without any model: for the keypoint engine,
    landmarks[n, k] = (rois[n, 1] + k, rois[n, 2] + sum of m<l>[0, 0, 0, 0] over l), and
    landmark_scores[n, k] = rois[n, 0] + k / 10."""

    def __init__(self, num_landmarks: int = 5):
        self.k = num_landmarks

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rois = inputs["rois"].astype(np.float32)
        corner = sum(float(inputs[f"m{level}"].reshape(-1)[0]) for level in range(2, 7))
        k = np.arange(self.k, dtype=np.float32)
        landmarks = np.stack([rois[:, 1:2] + k, np.broadcast_to(rois[:, 2:3] + corner, (len(rois), self.k))], -1)
        return {"landmarks": landmarks.astype(np.float32),
                "landmark_scores": (rois[:, 0:1] + k / 10).astype(np.float32)}

_LAYER_TYPES = {
    "Conv": "CONVOLUTION", "ConvTranspose": "DECONVOLUTION", "Relu": "ACTIVATION", "Clip": "ACTIVATION",
    "Sigmoid": "ACTIVATION", "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Div": "ELEMENTWISE",
    "Constant": "CONSTANT", "Shape": "SHAPE", "TopK": "TOPK", "Softmax": "SOFTMAX", "Cast": "CAST",
    "InstanceNormalization": "NORMALIZATION", "Resize": "RESIZE", "Concat": "CONCATENATION", "Exp": "UNARY",
    "ArgMax": "REDUCE", "Gather": "GATHER", "GatherElements": "GATHER", "MaxPool": "POOLING",
}
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64",
                onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.INT8: "INT8",
                onnx.TensorProto.UINT8: "UINT8"}
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
          "INT8": np.int8, "UINT8": np.uint8}


# ------------------------------------------------------------------ the documented limits
# Pure functions on plain data: what real TensorRT refuses, each with where it is documented. The
# fake classes below only call these.


def plugin_fields_refusal(key: tuple[str, str, str], attributes) -> str | None:
    """The ONNX parser passes a plugin node's attributes as creator fields; unknown ones are refused
    (the creator's field list: plugins/src/mlra_plugin.cpp, MlraCreator)."""
    unknown = sorted(set(attributes) - PLUGIN_FIELDS - {"plugin_version", "plugin_namespace"})
    return f"plugin {key}: fields {unknown} are not fields of the creator" if unknown else None


def set_shape_refusal(name: str, mn, opt, mx) -> str | None:
    """IOptimizationProfile::setDimensions (NvInferRuntime.h:2580-2598 of 11.1) returns false for
    unequal ranks or negative dimensions; pyCore.cpp opt_profile_set_shape raises on false."""
    if not len(mn) == len(opt) == len(mx) or any(d < 0 for d in (*mn, *opt, *mx)):
        return f"Shape provided for {name} is inconsistent with other shapes."
    return None


def profile_refusal(shapes: dict, refuse_zero_dims: bool = False) -> str | None:
    """addOptimizationProfile: every shape min <= opt <= max per dimension (zero dimensions refused
    where a TensorRT version does)."""
    lowest = 1 if refuse_zero_dims else 0
    for tensor, (mn, opt, mx) in shapes.items():
        if not (len(mn) == len(opt) == len(mx) and all(lowest <= a <= b <= c for a, b, c in zip(mn, opt, mx))):
            return f"profile for {tensor} invalid: {mn} {opt} {mx}"
    return None


def build_refusal(fp16_flag: bool, strongly_typed: bool, profiles: list[dict], inputs: dict) -> str | None:
    """build_serialized_network: no FP16 flag on a strongly typed network (NvInfer.h:12109-12113 of
    10.16); one profile naming only network inputs, a shape for every dynamic input (NvInfer.h:10832
    of 11.1), static dimensions equal to the network's (checked at build time, as TensorRT does)."""
    if fp16_flag and strongly_typed:
        return "FP16 flag with a strongly typed network"
    if len(profiles) != 1:
        return f"{len(profiles)} profiles"
    profile = profiles[0]
    strangers = sorted(set(profile) - set(inputs))
    if strangers:
        return f"profile names {strangers}, which are not network inputs"
    for name, declared in inputs.items():
        if -1 in declared and name not in profile:
            return f"dynamic input {name} has no profile"
        for shape in profile.get(name, ()):
            if len(shape) != len(declared) or any(d >= 0 and d != s for d, s in zip(declared, shape)):
                return f"profile {shape} does not fit {name} {declared}"
    return None


def node_refusal(node, constants) -> str | None:
    """The parser / layer error real TensorRT gives for this node, per its documentation (or None)."""
    if node.op_type == "TopK":
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            return "TopK: K must be a build-time constant (INetworkDefinition::addTopK takes a static k)"
        if int(k.reshape(-1)[0]) > TOPK_MAX_K:
            return f"TopK: K = {int(k.reshape(-1)[0])} > {TOPK_MAX_K}: Currently only values of K up to 3840 are supported"
    if node.op_type == "Resize":
        attrs = {a.name: (a.s.decode() if a.type == onnx.AttributeProto.STRING else a.i) for a in node.attribute}
        if attrs.get("mode", "nearest") not in RESIZE_MODES:
            return f"Resize: unsupported mode {attrs['mode']!r}"
        if attrs.get("coordinate_transformation_mode", "half_pixel") not in RESIZE_TRANSFORMS:
            return f"Resize: unsupported coordinate_transformation_mode {attrs['coordinate_transformation_mode']!r}"
        if attrs.get("antialias", 0):
            return "Resize: antialiasing is not supported"
    return None


# ------------------------------------------------------------------ enums (members: the pybind11 sources)

DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64"], start=0)
LayerType = enum.IntEnum("LayerType", sorted(set(_LAYER_TYPES.values()) | {"PLUGIN_V3", "SHUFFLE"}))
MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"], start=0)
TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
# TRT 11 dropped EXPLICIT_BATCH, FP16, INT8, BF16 and the precision-constraint flags (strong typing only).
NETWORK_FLAGS = {
    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
    11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
}
BUILDER_FLAGS = {
    10: {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
         "SPARSE_WEIGHTS": 7, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
         "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14, "BF16": 17},
    11: {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
         "VERSION_COMPATIBLE": 12, "EXCLUDE_LEAN_RUNTIME": 13},
}


# ------------------------------------------------------------------ recording

_BOOKKEEPING = {"calls", "accessed", "executor", "data_dependent", "registry", "major", "refuse_zero_dims",
                "fail_build", "unsupported_ops"}


def _from_outside() -> bool:
    """True when the attribute read comes from code under test, not from the stand-in itself."""
    return sys._getframe(2).f_code.co_filename != __file__


class FakeTensorRT(types.ModuleType):
    """The fake ``tensorrt`` module: its options and logs, and every public attribute read recorded
    as ("", name) in ``accessed``."""

    def __init__(self, version: str, name: str = "tensorrt", *, refuse_zero_dims: bool = False,
                 fail_build: bool = False, unsupported_ops: tuple[str, ...] = ()):
        super().__init__(name)
        self.__version__ = version
        self.major = int(version.split(".")[0])
        self.refuse_zero_dims, self.fail_build, self.unsupported_ops = refuse_zero_dims, fail_build, unsupported_ops
        self.calls: list[tuple] = []
        self.accessed: set[tuple[str, str]] = set()
        self.executor = None  # set by each runtime test: numpy inputs -> numpy outputs
        self.data_dependent: set[str] = set()  # outputs that go through an IOutputAllocator

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in _BOOKKEEPING and _from_outside():
            object.__getattribute__(self, "accessed").add(("", name))
        return object.__getattribute__(self, name)


class Recorded:
    """Base of the fake objects: each holds its module (``_trt``); public attribute reads from the
    code under test are recorded as (API_NAME, name), the pybind11 class name."""

    API_NAME = ""

    def __init__(self, trt: FakeTensorRT):
        self._trt = trt

    def __getattribute__(self, name):
        if not name.startswith("_") and name != "API_NAME" and _from_outside():
            object.__getattribute__(self, "_trt").accessed.add((type(self).API_NAME, name))
        return object.__getattribute__(self, name)

    def _call(self, *record):
        self._trt.calls.append(record)


# ------------------------------------------------------------------ logging

class ILogger:
    Severity = enum.IntEnum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"], start=0)

    def __init__(self):
        pass

    def log(self, severity, msg):  # pragma: no cover - overridden
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(ILogger.Severity)

    def __init__(self, min_severity=None):
        super().__init__()
        self.min_severity = min_severity


# ------------------------------------------------------------------ plugin registry

class PluginRegistry(Recorded):
    """load_library(path) registers the MultiLevelRoIAlign creator when the file exists."""

    API_NAME = "IPluginRegistry"

    def __init__(self, trt):
        super().__init__(trt)
        self.creators: set[tuple[str, str, str]] = set()
        self.libraries: dict[int, str] = {}

    def load_library(self, path):
        self._call("load_library", str(path))
        if not Path(path).is_file():
            return None
        handle = len(self.libraries) + 1
        self.libraries[handle] = str(path)
        self.creators |= PLUGIN_CREATORS
        return handle

    def deregister_library(self, handle):
        self._call("deregister_library", handle)
        self.libraries.pop(handle, None)
        if not self.libraries:
            self.creators.clear()

    def get_creator(self, name, version, namespace=""):
        return (name, version, namespace) if (name, version, namespace) in self.creators else None

    def all_creators_fields(self):
        return PLUGIN_FIELDS


# ------------------------------------------------------------------ network

class Tensor(Recorded):
    API_NAME = "ITensor"

    def __init__(self, trt, name, shape, dtype):
        super().__init__(trt)
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Layer(Recorded):
    """ILayer as in TensorRT 11: no precision / set_output_type (strong typing only)."""

    API_NAME = "ILayer"

    def __init__(self, trt, network, name, type_, inputs, outputs):
        super().__init__(trt)
        self._network = network
        self.name, self.type, self._inputs, self._outputs = name, type_, inputs, outputs
        self._precision = None
        self.output_types = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    @property
    def precision(self):
        raise AttributeError("ILayer.precision was removed in TensorRT 11")

    @precision.setter
    def precision(self, value):
        raise AttributeError("ILayer.precision was removed in TensorRT 11")


class Layer10(Layer):
    """ILayer of TensorRT 10: precision / set_output_type, refused on a strongly typed network
    (NvInfer.h:12109-12113 of 10.16)."""

    @property
    def precision(self):
        return self._precision if self._precision is not None else DataType.FLOAT

    @precision.setter
    def precision(self, value):
        if self._network.strongly_typed:
            raise RuntimeError(f"strongly typed network: setPrecision not allowed on {self.name}")
        self._call("layer.precision", self.name, DataType(value).name)
        self._precision = value

    def set_output_type(self, index, dtype):
        if self._network.strongly_typed:
            raise RuntimeError(f"strongly typed network: setOutputType not allowed on {self.name}")
        if self._outputs[index].dtype not in (DataType.FLOAT, DataType.HALF):
            raise RuntimeError(f"{self.name}: output {index} is {self._outputs[index].dtype.name}, not a float")
        self._call("layer.set_output_type", self.name, index, DataType(dtype).name)
        self.output_types[index] = dtype


class NetworkDefinition(Recorded):
    API_NAME = "INetworkDefinition"

    def __init__(self, trt, flags):
        super().__init__(trt)
        self.flags = flags
        strongly_typed_bit = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        self.strongly_typed = trt.major >= 11 or bool(flags & strongly_typed_bit)
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.layers: list[Layer] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]

    def add_layer(self, name, type_name, inputs, outputs):
        layer_class = Layer10 if self._trt.major < 11 else Layer
        self.layers.append(layer_class(self._trt, self, name, LayerType[type_name], inputs, outputs))


class ParserError(Recorded):
    API_NAME = "ParserError"

    def __init__(self, trt, desc, node=-1, node_name="", node_operator="", code="UNSUPPORTED_NODE"):
        super().__init__(trt)
        self._desc, self._node, self._name, self._op, self._code = desc, node, node_name, node_operator, code

    def desc(self):
        return self._desc

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def code(self):
        return types.SimpleNamespace(name=self._code)

    def file(self):
        return "ModelImporter.cpp"

    def line(self):
        return 42

    def func(self):
        return "parseNode"


def _dtype(elem):
    return DataType[_ONNX_TO_TRT.get(elem, "INT32")]


def _shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def _onnx_types_and_constants(model):
    """Element type of every named value, and the values known at build time (initializers and
    Constant nodes), as TensorRT's parser sees them."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    elem_types = {v.name: v.type.tensor_type.elem_type
                  for v in list(inferred.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    elem_types.update({i.name: i.data_type for i in model.graph.initializer})
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return elem_types, constants


class OnnxParser(Recorded):
    """Layers from the ONNX file (named as the ONNX nodes); refuses what node_refusal and the plugin
    rules refuse, and a custom-domain node without a registered creator."""

    API_NAME = "OnnxParser"

    def __init__(self, trt, network, logger):
        super().__init__(trt)
        self._call("OnnxParser")
        self.network, self.logger, self.errors = network, logger, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i):
        return self.errors[i]

    def clear_errors(self):
        self.errors.clear()

    def _error(self, desc, *where, code="UNSUPPORTED_NODE"):
        self.errors.append(ParserError(self._trt, desc, *where, code=code))

    def parse_from_file(self, path):
        self._call("parse_from_file", str(path))
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any load failure is a parser error
            self._error(f"failed to load the model: {exc}", code="MODEL_DESERIALIZE_FAILED")
            return False
        elem_types, constants = _onnx_types_and_constants(model)
        trt, net = self._trt, self.network
        inits = {i.name for i in model.graph.initializer}
        net.inputs = [Tensor(trt, i.name, _shape(i), _dtype(i.type.tensor_type.elem_type))
                      for i in model.graph.input if i.name not in inits]
        net.outputs = [Tensor(trt, o.name, _shape(o), _dtype(o.type.tensor_type.elem_type)) for o in model.graph.output]
        for index, node in enumerate(model.graph.node):
            where = (index, node.name, node.op_type)
            if node.op_type in trt.unsupported_ops:
                self._error(f"No importer registered for op: {node.op_type}", *where)
                continue
            refusal = node_refusal(node, constants)
            if refusal:
                self._error(refusal, *where, code="INVALID_NODE")
                continue
            kind = _LAYER_TYPES.get(node.op_type, "SHUFFLE")
            if node.domain not in ("", "ai.onnx"):
                attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
                key = (node.op_type, attrs.get("plugin_version", "1"), attrs.get("plugin_namespace", ""))
                if trt.registry.get_creator(*key) is None:
                    self._error(f"No importer registered for op: {node.op_type}. Attempting to import as plugin. "
                                f"Plugin creator registration failed: {key}", *where)
                    continue
                refusal = plugin_fields_refusal(key, [a.name for a in node.attribute])
                if refusal:
                    self._error(refusal, *where, code="INVALID_NODE")
                    continue
                kind = "PLUGIN_V3"
            outs = [Tensor(trt, o, (), _dtype(elem_types.get(o, onnx.TensorProto.FLOAT))) for o in node.output]
            ins = [Tensor(trt, i, (), _dtype(elem_types.get(i, onnx.TensorProto.FLOAT))) if i else None
                   for i in node.input]
            net.add_layer(node.name, kind, ins, outs)
        return not self.errors


# ------------------------------------------------------------------ builder

class OptimizationProfile(Recorded):
    API_NAME = "IOptimizationProfile"

    def __init__(self, trt):
        super().__init__(trt)
        self.shapes = {}

    def set_shape(self, name, min, opt, max):
        self._call("set_shape", name, tuple(min), tuple(opt), tuple(max))
        refusal = set_shape_refusal(name, min, opt, max)
        if refusal:
            raise RuntimeError(refusal)
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name):
        return self.shapes.get(name)


class BuilderConfig(Recorded):
    API_NAME = "IBuilderConfig"

    def __init__(self, trt, logger):
        super().__init__(trt)
        self.logger = logger
        self.flags: set[str] = {"TF32"}  # TensorRT's default
        self.pools = {}
        self.profiles: list[OptimizationProfile] = []
        self.plugins_to_serialize = []

    def set_flag(self, flag):
        name = self._trt.BuilderFlag(flag).name
        self._call("set_flag", name)
        self.flags.add(name)

    def clear_flag(self, flag):
        name = self._trt.BuilderFlag(flag).name
        self._call("clear_flag", name)
        self.flags.discard(name)

    def get_flag(self, flag):
        return self._trt.BuilderFlag(flag).name in self.flags

    def set_memory_pool_limit(self, pool, size):
        self._call("set_memory_pool_limit", MemoryPoolType(pool).name, int(size))
        self.pools[MemoryPoolType(pool).name] = int(size)

    def add_optimization_profile(self, profile):
        self._call("add_optimization_profile", dict(profile.shapes))
        refusal = profile_refusal(profile.shapes, self._trt.refuse_zero_dims)
        if refusal:
            self.logger.log(ILogger.Severity.ERROR, refusal)
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


class HostMemory(bytes):
    pass


def _plan(trt, network, config) -> dict:
    """What a stand-in "engine" holds: the build's settings and the network's I/O, as JSON."""
    def io(tensors):
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in tensors]

    def layer(layer):
        precision = DataType(layer._precision).name if layer._precision is not None else None
        return {"precision": precision, "output_types": {str(k): DataType(v).name for k, v in layer.output_types.items()}}

    return {"standin": True, "version": trt.__version__, "network_flags": network.flags,
            "strongly_typed": network.strongly_typed, "flags": sorted(config.flags), "pools": config.pools,
            "plugins_to_serialize": list(config.plugins_to_serialize),
            "inputs": io(network.inputs), "outputs": io(network.outputs),
            "profile": {n: [list(s) for s in v] for n, v in config.profiles[0].shapes.items()},
            "layers": {layer_.name: layer(layer_) for layer_ in network.layers}}


class Builder(Recorded):
    API_NAME = "Builder"

    def __init__(self, trt, logger):
        super().__init__(trt)
        self._call("Builder")
        self.logger = logger

    def create_network(self, flags=0):
        self._call("create_network", int(flags))
        return NetworkDefinition(self._trt, int(flags))

    def create_builder_config(self):
        return BuilderConfig(self._trt, self.logger)

    def create_optimization_profile(self):
        return OptimizationProfile(self._trt)

    def build_serialized_network(self, network, config):
        self._call("build_serialized_network", [i.name for i in network.inputs])
        if self._trt.fail_build:
            self.logger.log(ILogger.Severity.ERROR, "stand-in: build failed on purpose")
            return None
        refusal = build_refusal("FP16" in config.flags, network.strongly_typed,
                                [p.shapes for p in config.profiles], {t.name: t.shape for t in network.inputs})
        if refusal:
            self.logger.log(ILogger.Severity.ERROR, refusal)
            return None
        return HostMemory(json.dumps(_plan(self._trt, network, config)).encode())


# ------------------------------------------------------------------ runtime (executes on CPU memory)

class IOutputAllocator:
    def __init__(self):
        pass


def _read(ptr, shape, dtype):
    count = int(np.prod(shape)) if len(shape) else 1
    if count == 0:
        return np.zeros(shape, dtype)
    nbytes = count * np.dtype(dtype).itemsize
    buf = (ctypes.c_char * nbytes).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape).copy()


def _write(ptr, array):
    array = np.ascontiguousarray(array)
    if array.size:
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)


class ExecutionContext(Recorded):
    """Reads the inputs from their bound addresses, runs ``trt.executor`` and writes the outputs to
    their addresses, or through an IOutputAllocator for names in ``trt.data_dependent``."""

    API_NAME = "IExecutionContext"

    def __init__(self, trt, engine):
        super().__init__(trt)
        self.engine = engine
        self.shapes, self.addresses, self.allocators = {}, {}, {}
        self._results = None

    def set_input_shape(self, name, shape):
        self._call("set_input_shape", name, tuple(shape))
        mn, _, mx = self.engine.profile[name]
        ok = len(shape) == len(mn) and all(a <= s <= b for a, s, b in zip(mn, shape, mx))
        if ok:
            self.shapes[name] = tuple(shape)
            self._results = None
        return ok

    def set_tensor_address(self, name, ptr):
        self._call("set_tensor_address", name)
        self.addresses[name] = int(ptr)
        if name in self.engine.profile:  # an input moved: recompute
            self._results = None
        return True

    def infer_shapes(self):
        return [i["name"] for i in self.engine.plan["inputs"] if i["name"] not in self.shapes]

    def _compute(self):
        if self._results is None:
            inputs = {i["name"]: _read(self.addresses[i["name"]], self.shapes[i["name"]], _NUMPY[i["dtype"]])
                      for i in self.engine.plan["inputs"]}
            self._results = {k: np.asarray(v) for k, v in self._trt.executor(inputs).items()}
        return self._results

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        shape = list(self._compute()[name].shape)
        if name in self._trt.data_dependent:
            shape[0] = -1
        return tuple(shape)

    def set_output_allocator(self, name, allocator):
        self._call("set_output_allocator", name)
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream_handle):
        self._call("execute_async_v3", stream_handle)
        results = self._compute()
        for o in self.engine.plan["outputs"]:
            value = results[o["name"]].astype(_NUMPY[o["dtype"]])
            allocator = self.allocators.get(o["name"])
            if allocator is not None:
                ptr = allocator.reallocate_output_async(o["name"], 0, value.nbytes, 256, stream_handle)
                _write(ptr, value)
                allocator.notify_shape(o["name"], value.shape)
            else:
                _write(self.addresses[o["name"]], value)
        return True


class CudaEngine(Recorded):
    API_NAME = "ICudaEngine"

    def __init__(self, trt, plan):
        super().__init__(trt)
        self.plan = plan
        self.io = [(i["name"], TensorIOMode.INPUT, i) for i in plan["inputs"]] + \
                  [(o["name"], TensorIOMode.OUTPUT, o) for o in plan["outputs"]]
        self.profile = {n: tuple(tuple(s) for s in v) for n, v in plan["profile"].items()}

    num_io_tensors = property(lambda self: len(self.io))

    def get_tensor_name(self, i):
        return self.io[i][0]

    def _info(self, name):
        return next(x for x in self.io if x[0] == name)

    def get_tensor_mode(self, name):
        return self._info(name)[1]

    def get_tensor_dtype(self, name):
        return DataType[self._info(name)[2]["dtype"]]

    def get_tensor_shape(self, name):
        return tuple(self._info(name)[2]["shape"])

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profile[name]]

    def create_execution_context(self):
        return ExecutionContext(self._trt, self)


class Runtime(Recorded):
    API_NAME = "Runtime"

    def __init__(self, trt, logger):
        super().__init__(trt)
        self._call("Runtime")
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        self._call("deserialize_cuda_engine", len(data))
        try:
            plan = json.loads(bytes(data))
        except ValueError:
            return None
        return CudaEngine(self._trt, plan) if plan.get("standin") else None


# ------------------------------------------------------------------ the module

def _bound(cls, trt):
    """``cls`` as the code under test constructs it (trt.Builder(logger)): the module is passed first."""
    return type(cls.__name__, (cls,), {"__init__": functools.partialmethod(cls.__init__, trt)})


def make_tensorrt(version: str = "11.1.0.0", *, refuse_zero_dims: bool = False, fail_build: bool = False,
                  unsupported_ops: tuple[str, ...] = (), name: str = "tensorrt") -> FakeTensorRT:
    """A fake ``tensorrt`` module of this version; ``unsupported_ops`` get a parser error,
    ``fail_build`` makes every build fail, ``refuse_zero_dims`` refuses 0 in a profile."""
    trt = FakeTensorRT(version, name, refuse_zero_dims=refuse_zero_dims, fail_build=fail_build,
                       unsupported_ops=unsupported_ops)
    series = 11 if trt.major >= 11 else 10
    trt.DataType, trt.LayerType, trt.MemoryPoolType, trt.TensorIOMode = DataType, LayerType, MemoryPoolType, TensorIOMode
    trt.float32, trt.float16, trt.int32, trt.int64, trt.bool = (DataType.FLOAT, DataType.HALF, DataType.INT32,
                                                                DataType.INT64, DataType.BOOL)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", NETWORK_FLAGS[series])
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", BUILDER_FLAGS[series])
    trt.ILogger, trt.Logger, trt.IOutputAllocator = ILogger, Logger, IOutputAllocator
    trt.registry = PluginRegistry(trt)
    trt.get_plugin_registry = lambda: trt.registry
    trt.Builder, trt.OnnxParser, trt.Runtime = _bound(Builder, trt), _bound(OnnxParser, trt), _bound(Runtime, trt)
    trt.IOptimizationProfile = _bound(OptimizationProfile, trt)
    return trt


def make_tensorrt_lean(version: str = "11.4.0.106") -> FakeTensorRT:
    """Like the real tensorrt-lean: a runtime and a plugin registry, but no Builder / OnnxParser."""
    trt = make_tensorrt(version, name="tensorrt_lean")
    del trt.Builder, trt.OnnxParser
    return trt
