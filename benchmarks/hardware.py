"""The machine a benchmark runs on: CPU model, flags, cores and clock, and its FP32 peak, both MEASURED
(a 3x3 convolution and an sgemm timed at the benchmark's thread count: what the achieved rates are
divided by) and ESTIMATED from the clock and the vector width (kept only as a labelled comparison).
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

#: The measured kernels: a ResNet-stage 3x3 convolution (the detector's dominant layer shape) and a
#: square sgemm. FLOPs = 2 per multiply-add.
CONV_SHAPE = {"channels": 256, "height": 56, "width": 56}
SGEMM_SIZE = 1536


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def cpu_info() -> dict[str, Any]:
    """CPU model, flags, physical cores and clock, from /proc/cpuinfo, lscpu and sysfs (whatever exists)."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": [], "family": None,
                            "model_number": None, "logical_cpus": os.cpu_count() or 1,
                            "available_cpus": available_cpus()}
    cores: set[tuple[str, str]] = set()
    mhz_now = None
    try:
        blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
    except OSError:
        blocks = []
    for block in blocks:
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if not fields:
            continue
        if "model name" in fields and not info["flags"]:
            info["model"] = fields["model name"]
            info["family"] = fields.get("cpu family")
            info["model_number"] = fields.get("model")
            info["flags"] = sorted(fields.get("flags", "").split())
            mhz_now = float(fields["cpu MHz"]) if fields.get("cpu MHz") else None
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    info["physical_cores"] = len(cores) or info["logical_cpus"]
    info["virtualised"] = "hypervisor" in info["flags"]

    mhz, source = None, None
    lscpu = _lscpu()
    if lscpu.get("CPU max MHz"):
        mhz, source = float(lscpu["CPU max MHz"]), "lscpu 'CPU max MHz'"
    if mhz is None:
        try:
            mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000.0
            source = "sysfs cpuinfo_max_freq"
        except (OSError, ValueError):
            pass
    if mhz is None and mhz_now:
        mhz, source = mhz_now, "/proc/cpuinfo 'cpu MHz' (current/nominal clock: no max clock is exposed here)"
    info["max_mhz"], info["mhz_source"] = mhz, source
    return info


def cpu_label(info: dict[str, Any]) -> str:
    extra = []
    if info.get("family") is not None:
        extra.append(f"family {info['family']} model {info['model_number']}")
    extra.append(f"{info['physical_cores']} cores")
    if info.get("virtualised"):
        extra.append("virtualised")
    return f"{info['model']} ({', '.join(extra)})"


def cpu_peak_gflops(info: dict[str, Any], threads: int) -> dict[str, Any]:
    """An ESTIMATE of the FP32 peak: cores x GHz x FP32 lanes x 2 (FMA) x FMA units per core.

    lanes = 16 with avx512f, 8 with avx/avx2, else 4 (SSE); the FMA factor 2 needs the fma flag (or
    avx512f); FMA units per core = 2 is an assumption (true of Haswell..Sapphire Rapids server cores and
    AMD Zen 2..5; some AVX-512 Xeons have one 512-bit FMA unit, and the clock under sustained AVX load is
    often below the max clock, so the true peak may be lower). cores = min(threads, physical cores).
    """
    flags = set(info.get("flags") or [])
    lanes = 16 if "avx512f" in flags else 8 if ({"avx2", "avx"} & flags) else 4
    fma = 2 if ("fma" in flags or "avx512f" in flags) else 1
    units = 2
    cores = max(1, min(threads, info.get("physical_cores") or threads))
    ghz = (info.get("max_mhz") or 0.0) / 1000.0
    peak = cores * ghz * lanes * fma * units if ghz > 0 else None
    return {
        "gflops": peak, "estimate": True, "cores": cores, "ghz": ghz, "fp32_lanes": lanes, "fma_factor": fma,
        "fma_units_assumed": units, "clock_source": info.get("mhz_source"),
        "formula": f"peak GFLOP/s = cores {cores} x GHz {ghz:.3f} x FP32 lanes {lanes} x FMA {fma} x FMA units "
                   f"{units} (assumed) = {peak:.1f}" if peak else "no clock found: peak not estimated",
    }


def conv3x3_flop(channels: int, height: int, width: int) -> float:
    """FLOPs of one 3x3, stride 1, padding 1 convolution, channels -> channels, batch 1."""
    return 2.0 * channels * channels * 9 * height * width


def measure_peak_gflops(device: str, threads: int, runs: int = 10, conv_shape: dict[str, int] | None = None,
                        sgemm_size: int = SGEMM_SIZE) -> dict[str, Any]:
    """MEASURED FP32 peak: the median GFLOP/s over `runs` timed calls (after 2 warm-ups) of a 3x3
    convolution and of an sgemm with torch at `threads` threads on `device`; the peak is the faster of
    the two (what a well-tuned layer reaches on this machine right now, shared cores included)."""
    import torch

    shape = conv_shape or CONV_SHAPE
    c, h, w = shape["channels"], shape["height"], shape["width"]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, h, w, generator=gen).to(device)
    weight = torch.randn(c, c, 3, 3, generator=gen).to(device)
    a = torch.randn(sgemm_size, sgemm_size, generator=gen).to(device)
    b = torch.randn(sgemm_size, sgemm_size, generator=gen).to(device)
    kernels = {
        "conv3x3": (lambda: torch.nn.functional.conv2d(x, weight, padding=1), conv3x3_flop(c, h, w),
                    f"conv2d 3x3, {c}->{c} channels, {h}x{w}, batch 1"),
        "sgemm": (lambda: torch.mm(a, b), 2.0 * sgemm_size**3, f"sgemm {sgemm_size}^3"),
    }
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rates: dict[str, Any] = {}
    try:
        with torch.inference_mode():
            for name, (fn, flop, what) in kernels.items():
                for _ in range(2):
                    fn()
                sync()
                seconds = []
                for _ in range(max(1, runs)):
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    seconds.append(time.perf_counter() - t0)
                seconds.sort()
                median = seconds[len(seconds) // 2]
                rates[name] = {"gflops": flop / median / 1e9, "gflop": flop / 1e9, "median_ms": median * 1e3,
                               "runs": len(seconds), "what": what}
    finally:
        torch.set_num_threads(previous)
    best = max(rates, key=lambda k: rates[k]["gflops"])
    return {
        "gflops": rates[best]["gflops"], "estimate": False, "source": "measured", "kernel": best,
        "threads": threads, "device": device, "kernels": rates,
        "formula": f"MEASURED peak GFLOP/s = {rates[best]['gflops']:.1f} ({rates[best]['what']}, median of "
                   f"{rates[best]['runs']} runs at {threads} threads; "
                   + ", ".join(f"{k} {v['gflops']:.1f}" for k, v in rates.items()) + ")",
    }
