"""Run TensorRT plans with torch CUDA tensors as device buffers (no pycuda).

    engine = TrtEngine("artifacts/engines/keypoint_head.plan", plugin_library=lib)
    out = engine({"m2": m2, ..., "rois": rois})          # dict of torch CUDA tensors
    runtime = TensorRTRuntime("artifacts/engines", lib)   # a maskface.pipeline.Runtime, like OrtRuntime

Per call: every input's shape goes to ``set_input_shape`` (dynamic shapes, checked against the
engine's profile), outputs are allocated as torch tensors from the context's resolved shapes
(zero-sized outputs, e.g. N = 0 faces, get a valid dummy address; outputs whose shape depends on
data go through an IOutputAllocator backed by torch), addresses are bound with
``set_tensor_address`` and ``execute_async_v3`` runs on ``torch.cuda.current_stream()``; nothing
synchronises, so the results are ordered on that stream like any torch op.

The runtime module is ``tensorrt`` or, failing that, ``tensorrt_lean`` (the lean runtime runs
version-compatible plans; see build_engines(version_compatible=True)). TensorRT and CUDA are only
touched when an engine is created; without them a clear TensorRTUnavailable is raised.
One TrtEngine owns one execution context: use one per thread.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskface.contracts import FEATURE_NAMES
from maskface.pipeline import keypoint_feeds, select_candidates
from maskface.serving.manifest import EngineManifest

from .tensorrt_build import (
    DETECTOR,
    KEYPOINT_HEAD,
    METADATA_FILE,
    PLAN_FILES,
    TensorRTUnavailable,
    load_plugin_library,
)

RUNTIME_MODULES = ("tensorrt", "tensorrt_lean")
_DUMMY_BYTES = 256

_TORCH_DTYPES = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
}
_LOADED_PLUGINS: dict[tuple[str, str], Any] = {}


class EngineLoadError(RuntimeError):
    """A plan could not be deserialised (other TensorRT version or GPU, plugin not loaded, bad file)."""


def import_runtime(module: str | None = None):
    """``tensorrt`` (or ``tensorrt_lean``) with a Runtime; TensorRTUnavailable says why not."""
    names = (module,) if module else RUNTIME_MODULES
    reasons = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            reasons.append(f"'{name}' is not installed ({exc})")
            continue
        except Exception as exc:  # noqa: BLE001 - a broken install
            reasons.append(f"'import {name}' failed: {type(exc).__name__}: {exc}")
            continue
        if hasattr(mod, "Runtime"):
            return mod
        reasons.append(f"'{name}' has no Runtime")
    raise TensorRTUnavailable("no TensorRT runtime: " + "; ".join(reasons))


def _require_cuda(device: torch.device | str | int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT engines need a CUDA GPU, and torch.cuda.is_available() is False")
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"TensorRT engines run on a CUDA device, got {device}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _device_scope(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.device(device)
    import contextlib

    return contextlib.nullcontext()


def _load_plugin(trt, path: str | os.PathLike) -> Any:
    key = (trt.__name__, str(Path(path).resolve()))
    if key not in _LOADED_PLUGINS:
        _LOADED_PLUGINS[key] = load_plugin_library(trt, path)
    return _LOADED_PLUGINS[key]


def torch_dtype(trt_dtype) -> torch.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in _TORCH_DTYPES:
        raise TypeError(f"TensorRT data type {name} has no torch equivalent here")
    return _TORCH_DTYPES[name]


def _make_output_allocator(trt, device: torch.device):
    """An IOutputAllocator whose memory comes from torch (for outputs with data-dependent shapes)."""

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream=None):
            # Buffers are cleared before every execution, so each call's outputs own their memory.
            current = self.buffers.get(tensor_name)
            if current is None or current.numel() < max(int(size), 1):
                current = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = current
            return current.data_ptr()

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self.reallocate_output_async(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return TorchOutputAllocator()


class TrtEngine:
    """One deserialised plan + execution context; call it with a dict of inputs (torch or numpy)."""

    def __init__(self, plan_path: str | os.PathLike, plugin_library: str | os.PathLike | None = None, *,
                 device: torch.device | str | int | None = None, runtime_module: str | None = None):
        self.device = _require_cuda(device)
        trt = import_runtime(runtime_module)
        self.trt = trt
        self.plan_path = Path(plan_path)
        if not self.plan_path.is_file():
            raise FileNotFoundError(f"TensorRT plan {self.plan_path} not found: run `python export/build_engines.py` "
                                    "on a machine with TensorRT and a GPU")
        if plugin_library is not None:
            _load_plugin(trt, plugin_library)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with _device_scope(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self.engine is None:
                raise EngineLoadError(
                    f"{trt.__name__} {getattr(trt, '__version__', '?')} could not deserialise {self.plan_path}: built by "
                    "another TensorRT version or for another GPU, or its plugin library was not loaded")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise EngineLoadError(f"could not create an execution context for {self.plan_path} (out of GPU memory?)")
            self._dummy = torch.empty(_DUMMY_BYTES, dtype=torch.uint8, device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode_input = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode_input]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode_input]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self._allocator = None

    # ------------------------------------------------------------------ introspection
    def profile(self, name: str, index: int = 0) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shape of an input in optimisation profile `index`."""
        return tuple(tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(name, index))

    def declared_shape(self, name: str) -> tuple[int, ...]:
        """The engine's shape of a tensor (-1 for dynamic axes)."""
        return tuple(int(d) for d in self.engine.get_tensor_shape(name))

    # ------------------------------------------------------------------ execution
    def _as_input(self, name: str, value) -> torch.Tensor:
        dtype = self.dtypes[name]
        if isinstance(value, torch.Tensor):
            tensor = value.to(device=self.device, dtype=dtype)
        else:
            tensor = torch.as_tensor(np.asarray(value)).to(device=self.device, dtype=dtype)
        return tensor.contiguous()

    def _address(self, tensor: torch.Tensor) -> int:
        return tensor.data_ptr() if tensor.numel() else self._dummy.data_ptr()

    def __call__(self, inputs: Mapping[str, Any] | None = None, **named) -> dict[str, torch.Tensor]:
        feeds = {**(inputs or {}), **named}
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise KeyError(f"{self.plan_path.name}: inputs {self.input_names}; missing {missing}, unknown {extra}")
        ctx = self.context
        with _device_scope(self.device):
            bound = {}
            for name in self.input_names:
                tensor = self._as_input(name, feeds[name])
                if not ctx.set_input_shape(name, tuple(tensor.shape)):
                    mn, opt, mx = self.profile(name)
                    raise ValueError(f"{self.plan_path.name}: input {name} has shape {tuple(tensor.shape)}, outside the "
                                     f"engine's profile (min {mn}, opt {opt}, max {mx})")
                ctx.set_tensor_address(name, self._address(tensor))
                bound[name] = tensor
            unresolved = ctx.infer_shapes()
            if unresolved:
                raise ValueError(f"{self.plan_path.name}: shapes of {list(unresolved)} could not be inferred")
            outputs: dict[str, torch.Tensor] = {}
            dynamic = []
            for name in self.output_names:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    dynamic.append(name)
                    continue
                tensor = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                ctx.set_tensor_address(name, self._address(tensor))
                outputs[name] = tensor
            if dynamic:
                if self._allocator is None:
                    self._allocator = _make_output_allocator(self.trt, self.device)
                self._allocator.buffers.clear()
                self._allocator.shapes.clear()
                for name in dynamic:
                    ctx.set_output_allocator(name, self._allocator)
            if not ctx.execute_async_v3(_stream_handle(self.device)):
                raise RuntimeError(f"{self.plan_path.name}: execute_async_v3 failed (see the TensorRT log)")
            for name in dynamic:
                shape = self._allocator.shapes[name]
                dtype = self.dtypes[name]
                count = int(np.prod(shape)) if shape else 1
                if count == 0:
                    outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                else:
                    nbytes = count * torch.empty((), dtype=dtype).element_size()
                    outputs[name] = self._allocator.buffers[name][:nbytes].view(dtype).view(shape)
            del bound  # the inputs live until here; the caching allocator keeps stream order afterwards
        return {n: outputs[n] for n in self.output_names}


def _to_numpy(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().float().cpu().numpy() if t.dtype in (torch.float16, torch.bfloat16) else t.detach().cpu().numpy()
            for t in tensors]


class TensorRTRuntime:
    """detector.plan + keypoint_head.plan as a pipeline runtime (maskface.pipeline.Runtime: detect /
    select / keypoints; num_landmarks).

    engines: the build folder (detector.plan, keypoint_head.plan, engines.json) or a
    (detector_plan, keypoint_plan) pair. output="numpy" returns numpy arrays like OrtRuntime;
    output="torch" returns CUDA tensors (no host copies; for benchmarks), and keypoints() then takes
    the CUDA features of detect() directly.
    """

    def __init__(self, engines: str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike],
                 plugin_library: str | os.PathLike | None = None, *, device=None, output: str = "numpy",
                 runtime_module: str | None = None):
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        if isinstance(engines, (tuple, list)):
            detector_plan, keypoint_plan = (Path(p) for p in engines)
            self.metadata: EngineManifest | None = None
        else:
            folder = Path(engines)
            detector_plan, keypoint_plan = folder / PLAN_FILES[DETECTOR], folder / PLAN_FILES[KEYPOINT_HEAD]
            meta = folder / METADATA_FILE
            self.metadata = EngineManifest.read(folder) if meta.is_file() else None
        self.output = output
        self.detector = TrtEngine(detector_plan, None, device=device, runtime_module=runtime_module)
        self.keypoint_head = TrtEngine(keypoint_plan, plugin_library, device=self.detector.device,
                                       runtime_module=runtime_module)
        self.device = self.detector.device
        self.feature_names = [n for n in FEATURE_NAMES if n in self.detector.output_names]
        self.num_landmarks = self._num_landmarks()

    def _num_landmarks(self) -> int:
        declared = self.keypoint_head.declared_shape("landmarks")[1]
        if declared >= 0:
            return int(declared)
        # K left symbolic by the graph: one call at the profile's smallest shapes (zeros) resolves it.
        engine = self.keypoint_head
        feeds = {n: torch.zeros(engine.profile(n)[0], dtype=engine.dtypes[n], device=self.device) for n in engine.input_names}
        return int(engine(feeds)["landmarks"].shape[1])

    def _out(self, tensors: Sequence[torch.Tensor]):
        return list(tensors) if self.output == "torch" else _to_numpy(tensors)

    def detect(self, images) -> tuple[Any, Any, list[Any]]:
        """images [B, 3, H, W] (normalised, sides multiples of 64) -> scores, boxes, [m2..m6]."""
        out = self.detector({"images": images})
        scores, boxes, *features = self._out([out["scores"], out["boxes"], *(out[n] for n in self.feature_names)])
        return scores, boxes, features

    def select(self, scores, boxes, inference) -> Any:
        """The pipeline's selection rule on one image's candidates (numpy or CUDA tensors)."""
        return select_candidates(scores, boxes, inference)

    def keypoints(self, features: Sequence[Any], rois) -> tuple[Any, Any]:
        """features m2..m6 (numpy or torch), rois [N, 5] -> landmarks [N, K, 2], landmark_scores [N, K]."""
        if isinstance(rois, torch.Tensor):
            feeds = dict(zip(self.feature_names, features))
            feeds["rois"] = rois.reshape(-1, 5)
        else:
            feeds = keypoint_feeds(features, rois, self.feature_names)
        if feeds["rois"].shape[0] == 0 and self.keypoint_head.profile("rois")[0][0] > 0:
            # An engine built where TensorRT refused N = 0 in the profile: no face, nothing to run.
            empty = torch.empty((0, self.num_landmarks, 2), dtype=torch.float32, device=self.device)
            return tuple(self._out([empty, empty[..., 0]]))
        out = self.keypoint_head(feeds)
        landmarks, scores = self._out([out["landmarks"], out["landmark_scores"]])
        return landmarks, scores


TrtGraphs = TensorRTRuntime  # the old name, kept for existing callers
