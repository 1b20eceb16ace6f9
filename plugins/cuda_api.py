"""The multi-level RoIAlign kernel on torch CUDA tensors (the current stream), through the C library."""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Sequence

from .binding import _check, _check_attrs, load_library

if TYPE_CHECKING:  # annotations only; torch is imported where it is used
    import torch


# --------------------------------------------------------------------------------------------- torch CUDA API


def multilevel_roi_align_cuda(
    features: Sequence["torch.Tensor"],
    rois: "torch.Tensor",
    output_size: int = 14,
    sampling_ratio: int = 2,
    canonical_level: int = 3,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 6,
    aligned: bool = True,
    spatial_scales: Sequence[float] | None = None,
    out: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """The CUDA kernel on torch CUDA tensors (float32 / float16 maps, float32 rois), launched on the current
    torch stream of the maps' device. Returns [N, C, S, S] of the maps' dtype (asynchronous, like any op)."""
    import torch

    lib = load_library()
    _check_attrs(len(features), min_level, max_level, spatial_scales)
    dtype = features[0].dtype
    codes = {torch.float32: 0, torch.float16: 1}
    if dtype not in codes:
        raise TypeError(f"features must be float32 or float16, got {dtype}")
    device = features[0].device
    if device.type != "cuda":
        raise ValueError("multilevel_roi_align_cuda needs CUDA tensors (use multilevel_roi_align_cpu on the host)")
    maps = [f.contiguous() for f in features]
    for i, f in enumerate(maps):
        if f.dtype != dtype or f.device != device or f.dim() != 4 or f.shape[:2] != maps[0].shape[:2]:
            raise ValueError(f"feature map {i}: {tuple(f.shape)} {f.dtype} {f.device} does not match map 0")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N, 5], got {tuple(rois.shape)}")
    rois = rois.to(device=device, dtype=torch.float32).contiguous()
    batch, channels = maps[0].shape[:2]
    shape = (rois.shape[0], channels, output_size, output_size)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=device)
    elif tuple(out.shape) != shape or out.dtype != dtype or out.device != device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {shape} {dtype} tensor on {device}")
    n = len(maps)
    ptrs = (ctypes.c_void_p * n)(*[f.data_ptr() for f in maps])
    heights = (ctypes.c_int * n)(*[f.shape[2] for f in maps])
    widths = (ctypes.c_int * n)(*[f.shape[3] for f in maps])
    scales = None if spatial_scales is None else (ctypes.c_float * n)(*[float(s) for s in spatial_scales])
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        status = lib.mlra_forward_cuda(
            ptrs, heights, widths, n, batch, channels, rois.data_ptr(), rois.shape[0], out.data_ptr(), codes[dtype],
            output_size, sampling_ratio, canonical_level, canonical_size, min_level, max_level,
            int(bool(aligned)), scales, stream,
        )
    _check(lib, status, "mlra_forward_cuda")
    return out


def assign_levels_cuda(
    rois: "torch.Tensor",
    canonical_level: int = 3,
    canonical_size: float = 224.0,
    min_level: int = 2,
    max_level: int = 6,
) -> "torch.Tensor":
    """Eq. 6 levels computed on the GPU by the kernel's own device code (int32 [N])."""
    import torch

    lib = load_library()
    rois = rois.to(torch.float32).contiguous()
    levels = torch.empty(rois.shape[0], dtype=torch.int32, device=rois.device)
    with torch.cuda.device(rois.device):
        stream = torch.cuda.current_stream(rois.device).cuda_stream
        status = lib.mlra_assign_levels_cuda(
            rois.data_ptr(), rois.shape[0], canonical_level, canonical_size, min_level, max_level,
            levels.data_ptr(), stream,
        )
    _check(lib, status, "mlra_assign_levels_cuda")
    return levels
