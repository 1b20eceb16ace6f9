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
