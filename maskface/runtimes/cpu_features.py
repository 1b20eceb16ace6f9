"""What the CPU can do natively, read from /proc/cpuinfo (Linux). Imports neither torch nor a runtime,
so the serving stubs can ask before loading one."""
from __future__ import annotations

from pathlib import Path

#: /proc/cpuinfo flags of x86 instructions that compute BF16 dot products natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: /proc/cpuinfo flags of x86 instructions that add U8 x S8 products in int32 (VNNI); without them the
#: INT8 kernels of ONNX Runtime and OpenVINO add pairs in int16, which saturates (export/quantize_int8.py).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_flags(cpuinfo_text: str, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The `wanted` flags on the `flags` lines of a /proc/cpuinfo text, in `wanted` order."""
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            found.update(set(value.split()) & set(wanted))
    return tuple(flag for flag in wanted if flag in found)


def cpuinfo_bf16_flags(cpuinfo_text: str) -> tuple[str, ...]:
    """The NATIVE_BF16_FLAGS on the `flags` lines of a /proc/cpuinfo text."""
    return cpuinfo_flags(cpuinfo_text, NATIVE_BF16_FLAGS)


def read_cpuinfo() -> str | None:
    """/proc/cpuinfo's text, or None where there is none (macOS, Windows)."""
    return CPUINFO.read_text(errors="replace") if CPUINFO.is_file() else None


def int8_saturation_warning(detector_path: str | Path, cpuinfo_text: str | None = None) -> str | None:
    """A warning when an INT8 graph's weights go beyond -64..64 and this CPU (cpuinfo_text, default
    /proc/cpuinfo) has no VNNI: there its U8S8 kernels saturate int16 sums (the demo detector's box drift
    p99 at FP32's anchors: 7.0-8.7 px, against 2.9-3.2 px with reduced-range weights; docs/DEPLOYMENT.md 5.2).
    None when the CPU has VNNI, cannot be read, or the weights fit."""
    text = read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    if text is None or cpuinfo_flags(text, VNNI_FLAGS):
        return None
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(detector_path))
    widest = max((int(np.abs(numpy_helper.to_array(i).astype(np.int16)).max()) for i in model.graph.initializer
                  if i.data_type == onnx.TensorProto.INT8 and i.dims), default=0)
    if widest <= 64:
        return None
    return (f"{detector_path}: INT8 weights up to {widest} on a CPU without VNNI, whose INT8 kernels saturate "
            "beyond 64: rebuild it here with `python export/quantize_int8.py --weight-range reduced` "
            "(auto does so on such a CPU)")
