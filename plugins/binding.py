"""ctypes binding of the multi-level RoIAlign library (CUDA kernel + CPU reference) in plugins/.

    from plugins.binding import multilevel_roi_align_cpu
    out = multilevel_roi_align_cpu([m2, m3, m4, m5, m6], rois)        # numpy, float32 or float16 maps

``build_library()`` compiles ``libmaskface_mlra.so`` (kernel + reference, no TensorRT) with nvcc, once per
source hash; ``build_plugin_library()`` adds the TensorRT IPluginV3 glue when TensorRT headers are found.
``multilevel_roi_align_cuda()`` runs the kernel on torch CUDA tensors (current stream).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from maskface.contracts import KERNEL_LIBRARY_NAME, PLUGIN_LIBRARY_NAME

if TYPE_CHECKING:  # annotations only; torch is imported where it is used
    import torch

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_DIR.parent
INCLUDE_DIR = PLUGIN_DIR / "include"
SRC_DIR = PLUGIN_DIR / "src"
BUILD_ROOT = PLUGIN_DIR / "build"

#: GPU architectures of the default build (2080 Ti, A100, A10/3090, L4/4090, H100) + PTX of the last one.
DEFAULT_ARCHS: tuple[str, ...] = ("75", "80", "86", "89", "90")
ABI_VERSION = 1


_KERNEL_SOURCES = ("mlra_kernel.cu", "mlra_reference.cpp")
_PLUGIN_SOURCES = _KERNEL_SOURCES + ("mlra_plugin.cpp",)
_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


class BuildError(RuntimeError):
    """The library could not be built (no nvcc, no TensorRT headers, or a compiler error)."""


class MlraError(RuntimeError):
    """A C entry point returned an error status."""


# --------------------------------------------------------------------------------------------- build


def find_nvcc() -> str | None:
    """nvcc from $NVCC / $CUDACXX, PATH, $CUDA_HOME / $CUDA_PATH, or /usr/local/cuda."""
    for var in ("NVCC", "CUDACXX"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return value
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").is_file():
            return str(Path(value) / "bin" / "nvcc")
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


THIRD_PARTY_ENV = "MASKFACE_THIRD_PARTY"


def third_party_tensorrt_includes() -> list[Path]:
    """TensorRT header sets of the shared reference folder ($MASKFACE_THIRD_PARTY, else ../shared/third_party
    beside the repository: tensorrt/<version>/include), newest version first."""
    root = Path(os.environ[THIRD_PARTY_ENV]) if os.environ.get(THIRD_PARTY_ENV) else REPO_ROOT.parent / "shared" / "third_party"
    found = [p for p in (root / "tensorrt").glob("*/include") if (p / "NvInferRuntime.h").is_file()]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    return sorted(found, key=version, reverse=True)


def find_tensorrt_include(explicit: str | os.PathLike | None = None) -> Path | None:
    """Folder holding NvInferRuntime.h: explicit, $TensorRT_INCLUDE_DIR, $TensorRT_ROOT/include, a
    git-ignored third_party/TensorRT*/include of this repository, the shared reference headers
    (third_party_tensorrt_includes), or the usual system locations."""
    if explicit:
        if not (Path(explicit) / "NvInferRuntime.h").is_file():
            raise BuildError(f"no NvInferRuntime.h under {explicit}")
        return Path(explicit).resolve()
    candidates: list[Path] = []
    if os.environ.get("TensorRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["TensorRT_INCLUDE_DIR"]))
    if os.environ.get("TensorRT_ROOT"):
        candidates.append(Path(os.environ["TensorRT_ROOT"]) / "include")
    candidates += sorted((REPO_ROOT / "third_party").glob("TensorRT*/include"), reverse=True)
    candidates += third_party_tensorrt_includes()
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/local/TensorRT/include"), Path("/usr/include")]
    for c in candidates:
        if (c / "NvInferRuntime.h").is_file():
            return c.resolve()
    return None


def tensorrt_header_version(include_dir: str | os.PathLike) -> str:
    """'MAJOR.MINOR.PATCH' read from NvInferVersion.h."""
    text = (Path(include_dir) / "NvInferVersion.h").read_text()
    parts = {}
    for key in ("MAJOR", "MINOR", "PATCH"):
        for line in text.splitlines():
            tokens = line.split()
            if len(tokens) >= 3 and tokens[0] == "#define" and tokens[1] in (f"TRT_{key}_ENTERPRISE", f"NV_TENSORRT_{key}"):
                if tokens[2].isdigit():
                    parts[key] = tokens[2]
                    break
    return ".".join(parts.get(k, "?") for k in ("MAJOR", "MINOR", "PATCH"))


def _normalise_archs(archs: str | Iterable[str | int] | None) -> tuple[str, ...]:
    if archs is None:
        env = os.environ.get("MASKFACE_CUDA_ARCHS")
        archs = env if env else DEFAULT_ARCHS
    if isinstance(archs, (str, int)):
        archs = str(archs).replace(",", ";").split(";")
    out = []
    for a in archs:
        a = str(a).strip().lower().removeprefix("sm_").removeprefix("compute_")
        if not a:
            continue
        if not (a.rstrip("af").isdigit()):
            raise ValueError(f"bad CUDA architecture {a!r} (use e.g. '75', '90', '90a')")
        out.append(a)
    if not out:
        raise ValueError("no CUDA architecture given")
    return tuple(out)


def _gencode_flags(archs: Sequence[str], ptx: bool) -> list[str]:
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    if ptx:
        last = archs[-1]
        flags += ["-gencode", f"arch=compute_{last},code=compute_{last}"]
    return flags


def _nvcc_version(nvcc: str) -> str:
    try:
        return subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover - broken toolchain
        raise BuildError(f"cannot run {nvcc}: {exc}") from exc


def _hash_sources(files: Iterable[Path], extra: str, root: Path | None = None) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        base = PLUGIN_DIR if path.is_relative_to(PLUGIN_DIR) else (root or path.parent)
        h.update(str(path.relative_to(base)).encode())
        h.update(path.read_bytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], verbose: bool) -> subprocess.Popen:
    if verbose:
        print("+", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, cmd: list[str], tmp: str) -> None:
    output, _ = proc.communicate()
    if proc.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BuildError(f"nvcc failed ({proc.returncode}):\n{' '.join(cmd)}\n{output}")


def _build(
    name: str,
    sources: Sequence[str],
    build_dir: str | os.PathLike | None,
    archs: str | Iterable[str | int] | None,
    ptx: bool,
    tensorrt_include: Path | None,
    verbose: bool,
) -> Path:
    """Compile each source to an object (cached by content hash, shared by both libraries), then link."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(
            "nvcc not found (looked at $NVCC, $CUDACXX, PATH, $CUDA_HOME, /usr/local/cuda/bin): "
            "install the CUDA toolkit or set CUDA_HOME to build the multi-level RoIAlign library"
        )
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise BuildError("no host C++ compiler (g++) on PATH: nvcc needs one")
    archs = _normalise_archs(archs)
    version = _nvcc_version(nvcc)
    base = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-I", str(INCLUDE_DIR)]
    headers = list(INCLUDE_DIR.rglob("*.h"))
    root = Path(build_dir) if build_dir is not None else BUILD_ROOT
    objects, pending = [], []
    with _file_lock(root / ".lock"):
        for src in sources:
            path = SRC_DIR / src
            flags = list(base)
            inputs = headers + [path]
            if path.suffix == ".cu":
                flags += _gencode_flags(archs, ptx)
            if src == "mlra_plugin.cpp":
                flags += ["-I", str(tensorrt_include), "-Xcompiler", "-Wno-deprecated-declarations"]
                inputs += sorted(tensorrt_include.glob("NvInfer*.h"))
            key = _hash_sources(inputs, " ".join(flags) + "\n" + version, root=tensorrt_include)
            obj = root / "obj" / f"{path.stem}-{key}.o"
            objects.append(obj)
            if obj.is_file():
                continue
            obj.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".o", dir=obj.parent)
            os.close(fd)
            cmd = [nvcc, *flags, "-c", str(path), "-o", tmp]
            pending.append((_run(cmd, verbose), cmd, tmp, obj))
        for proc, cmd, tmp, obj in pending:  # compiled concurrently
            _wait(proc, cmd, tmp)
            os.replace(tmp, obj)
        key = hashlib.sha256("".join(o.name for o in objects).encode()).hexdigest()[:16]
        out_dir = Path(build_dir) if build_dir is not None else BUILD_ROOT / f"py-{key}"
        target = out_dir / name
        if target.is_file():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out_dir)
        os.close(fd)
        cmd = [nvcc, "-shared", *(str(o) for o in objects), "-o", tmp, "-ldl"]
        _wait(_run(cmd, verbose), cmd, tmp)
        os.replace(tmp, target)
    return target


def build_library(
    build_dir: str | os.PathLike | None = None,
    archs: str | Iterable[str | int] | None = None,
    *,
    ptx: bool = True,
    verbose: bool = False,
) -> Path:
    """Compile libmaskface_mlra.so (CUDA kernel + CPU reference; no TensorRT) with nvcc and return its path.

    Cached: the default build_dir is plugins/build/py-<hash of sources, flags and nvcc version>, so a
    second call (or test) reuses the library. archs: e.g. ("75", "90") or "75;90"; default
    $MASKFACE_CUDA_ARCHS or DEFAULT_ARCHS; ptx adds PTX of the last arch for newer GPUs.
    """
    return _build(KERNEL_LIBRARY_NAME, _KERNEL_SOURCES, build_dir, archs, ptx, None, verbose)


def build_plugin_library(
    build_dir: str | os.PathLike | None = None,
    archs: str | Iterable[str | int] | None = None,
    *,
    tensorrt_include: str | os.PathLike | None = None,
    ptx: bool = True,
    verbose: bool = False,
) -> Path:
    """Compile libmaskface_plugins.so (kernel + reference + TensorRT IPluginV3 glue). Needs TensorRT's
    headers (see find_tensorrt_include); raises BuildError when there are none."""
    include = find_tensorrt_include(tensorrt_include)
    if include is None:
        raise BuildError(
            "TensorRT headers (NvInferRuntime.h) not found: set TensorRT_ROOT or TensorRT_INCLUDE_DIR "
            "(or pass tensorrt_include=) to build the TensorRT plugin; the kernel library needs none"
        )
    return _build(PLUGIN_LIBRARY_NAME, _PLUGIN_SOURCES, build_dir, archs, ptx, include, verbose)


def build_plugin_selftest(
    build_dir: str | os.PathLike | None = None,
    *,
    tensorrt_include: str | os.PathLike | None = None,
    verbose: bool = False,
) -> Path:
    """Compile tools/plugin_selftest.cpp, which drives the IPluginV3 glue of libmaskface_plugins.so without
    a TensorRT runtime (run it as `plugin_selftest LIB [--gpu]`). Needs TensorRT's headers."""
    include = find_tensorrt_include(tensorrt_include)
    if include is None:
        raise BuildError("TensorRT headers (NvInferRuntime.h) not found: cannot build the plugin self-test")
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found: cannot build the plugin self-test")
    source = PLUGIN_DIR / "tools" / "plugin_selftest.cpp"
    flags = ["-O1", "-std=c++17", "-Xcompiler", "-Wno-deprecated-declarations", "-I", str(INCLUDE_DIR), "-I", str(include)]
    files = [source, INCLUDE_DIR / "maskface_plugins" / "mlra_api.h", *sorted(include.glob("NvInfer*.h"))]
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    h.update((" ".join(flags) + _nvcc_version(nvcc)).encode())
    out_dir = Path(build_dir) if build_dir is not None else BUILD_ROOT / f"selftest-{h.hexdigest()[:16]}"
    target = out_dir / "plugin_selftest"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".plugin_selftest.", dir=out_dir)
    os.close(fd)
    cmd = [nvcc, *flags, str(source), "-o", tmp, "-ldl"]
    if verbose:
        print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"nvcc failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


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
