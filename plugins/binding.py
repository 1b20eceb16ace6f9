"""ctypes binding of the multi-level RoIAlign library (CUDA kernel + CPU reference) in plugins/.

    from plugins.binding import multilevel_roi_align_cpu
    out = multilevel_roi_align_cpu([m2, m3, m4, m5, m6], rois)        # numpy, float32 or float16 maps

The library is built by plugins/nvcc_build.py (re-exported here: build_library, build_plugin_library, ...);
the torch CUDA entry points are in plugins/cuda_api.py (multilevel_roi_align_cuda, assign_levels_cuda,
re-exported here too).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only; torch is imported where it is used
    import torch

from .nvcc_build import (  # noqa: F401  (re-exported: callers use plugins.binding.X)
    BUILD_ROOT, INCLUDE_DIR, PLUGIN_DIR, REPO_ROOT, SRC_DIR, THIRD_PARTY_ENV, BuildError, DEFAULT_ARCHS,
    build_library, build_plugin_library, build_plugin_selftest, find_nvcc, find_tensorrt_include,
    tensorrt_header_version, third_party_tensorrt_includes,
)

ABI_VERSION = 1
_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


class MlraError(RuntimeError):
    """A C entry point returned an error status."""


# --------------------------------------------------------------------------------------------- load

_LIB: ctypes.CDLL | None = None
_LIB_PATH: Path | None = None
_c_int_p = ctypes.POINTER(ctypes.c_int)
_c_float_p = ctypes.POINTER(ctypes.c_float)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    forward_args = [
        ctypes.POINTER(ctypes.c_void_p), _c_int_p, _c_int_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
        ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int, _c_float_p,
    ]
    lib.mlra_abi_version.restype = ctypes.c_int
    lib.mlra_status_string.argtypes = [ctypes.c_int]
    lib.mlra_status_string.restype = ctypes.c_char_p
    lib.mlra_forward_cpu.argtypes = forward_args
    lib.mlra_forward_cpu.restype = ctypes.c_int
    lib.mlra_forward_cuda.argtypes = forward_args + [ctypes.c_void_p]
    lib.mlra_forward_cuda.restype = ctypes.c_int
    levels_args = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.mlra_assign_levels_cpu.argtypes = levels_args
    lib.mlra_assign_levels_cpu.restype = ctypes.c_int
    lib.mlra_assign_levels_cuda.argtypes = levels_args + [ctypes.c_void_p]
    lib.mlra_assign_levels_cuda.restype = ctypes.c_int
    lib.mlra_float_to_half_cpu.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.mlra_float_to_half_cpu.restype = None
    lib.mlra_half_to_float_cpu.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.mlra_half_to_float_cpu.restype = None
    lib.mlra_cuda_device_count.restype = ctypes.c_int
    version = lib.mlra_abi_version()
    if version != ABI_VERSION:
        raise BuildError(f"library ABI version {version}, binding expects {ABI_VERSION}: rebuild it")
    return lib


def load_library(path: str | os.PathLike | None = None, **build_kwargs) -> ctypes.CDLL:
    """Load (building first when needed) the kernel + reference library; cached per process.

    path: an explicit libmaskface_mlra.so or libmaskface_plugins.so (both export the C entry points);
    default $MASKFACE_MLRA_LIBRARY, else build_library(**build_kwargs)."""
    global _LIB, _LIB_PATH
    if path is None:
        path = os.environ.get("MASKFACE_MLRA_LIBRARY") or None
    if path is None and _LIB is not None and not build_kwargs:
        return _LIB
    resolved = Path(path) if path is not None else build_library(**build_kwargs)
    resolved = resolved.resolve()
    if _LIB is not None and _LIB_PATH == resolved:
        return _LIB
    lib = _declare(ctypes.CDLL(str(resolved)))
    _LIB, _LIB_PATH = lib, resolved
    return lib


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        text = lib.mlra_status_string(status).decode()
        raise MlraError(f"{what} failed with status {status}: {text}")


def cuda_device_count(lib: ctypes.CDLL | None = None) -> int:
    """CUDA devices the library's runtime sees (0 on a CPU-only machine)."""
    return (lib or load_library()).mlra_cuda_device_count()


# --------------------------------------------------------------------------------------------- numpy API


def assign_levels_cpu(
    rois: np.ndarray, canonical_level: int = 3, canonical_size: float = 224.0, min_level: int = 2, max_level: int = 6
) -> np.ndarray:
    """Eq. 6 level of each ROI [N, 5] computed by the C library (the plugin's own code)."""
    lib = load_library()
    rois = np.ascontiguousarray(rois, dtype=np.float32).reshape(-1, 5)
    levels = np.empty(len(rois), dtype=np.int32)
    status = lib.mlra_assign_levels_cpu(
        rois.ctypes.data, len(rois), canonical_level, canonical_size, min_level, max_level, levels.ctypes.data,
    )
    _check(lib, status, "mlra_assign_levels_cpu")
    return levels.astype(np.int64)


def float_to_half(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 through the shared header (round to nearest even)."""
    lib = load_library()
    values = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty(values.shape, dtype=np.float16)
    lib.mlra_float_to_half_cpu(values.ctypes.data, out.ctypes.data, values.size)
    return out


def half_to_float(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 through the shared header."""
    lib = load_library()
    values = np.ascontiguousarray(values, dtype=np.float16)
    out = np.empty(values.shape, dtype=np.float32)
    lib.mlra_half_to_float_cpu(values.ctypes.data, out.ctypes.data, values.size)
    return out


def _check_attrs(num_maps: int, min_level: int, max_level: int, spatial_scales) -> None:
    if num_maps != max_level - min_level + 1:
        raise ValueError(f"{num_maps} feature maps for levels {min_level}..{max_level}")
    if spatial_scales is not None and len(spatial_scales) != num_maps:
        raise ValueError(f"{len(spatial_scales)} spatial scales for {num_maps} feature maps")


def multilevel_roi_align_cpu(
    features: Sequence[np.ndarray],
    rois: np.ndarray,
    output_size: int = 14,
    sampling_ratio: int = 2,
    canonical_level: int = 3,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 6,
    aligned: bool = True,
    spatial_scales: Sequence[float] | None = None,
) -> np.ndarray:
    """CPU reference of the plugin. features: M_min..M_max, each [B, C, H_l, W_l] float32 or float16 (all
    the same dtype); rois [N, 5] (batch index, x1, y1, x2, y2) in input pixels. Returns [N, C, S, S] of the
    features' dtype (float16 output is rounded from a float32 accumulation). spatial_scales default 2^-level."""
    lib = load_library()
    _check_attrs(len(features), min_level, max_level, spatial_scales)
    dtype = np.asarray(features[0]).dtype
    if dtype not in _DTYPES:
        raise TypeError(f"features must be float32 or float16, got {dtype}")
    maps = [np.ascontiguousarray(f) for f in features]
    for i, f in enumerate(maps):
        if f.dtype != dtype:
            raise TypeError(f"feature map {i} is {f.dtype}, map 0 is {dtype}")
        if f.ndim != 4 or f.shape[:2] != maps[0].shape[:2]:
            raise ValueError(f"feature map {i} has shape {f.shape}; all maps must be [B, C, H, W] with one B, C")
    rois = np.ascontiguousarray(rois, dtype=np.float32)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N, 5], got {rois.shape}")
    batch, channels = maps[0].shape[:2]
    out = np.empty((len(rois), channels, output_size, output_size), dtype=dtype)
    n = len(maps)
    ptrs = (ctypes.c_void_p * n)(*[f.ctypes.data for f in maps])
    heights = (ctypes.c_int * n)(*[f.shape[2] for f in maps])
    widths = (ctypes.c_int * n)(*[f.shape[3] for f in maps])
    scales = None if spatial_scales is None else (ctypes.c_float * n)(*[float(s) for s in spatial_scales])
    status = lib.mlra_forward_cpu(
        ptrs, heights, widths, n, batch, channels, rois.ctypes.data, len(rois), out.ctypes.data, _DTYPES[dtype],
        output_size, sampling_ratio, canonical_level, canonical_size, min_level, max_level, int(bool(aligned)), scales,
    )
    _check(lib, status, "mlra_forward_cpu")
    return out



# The torch CUDA entry points (plugins/cuda_api.py uses the loader above).
from .cuda_api import assign_levels_cuda, multilevel_roi_align_cuda  # noqa: E402,F401
