"""Build the multi-level RoIAlign libraries of plugins/ with nvcc, once per source hash:
``build_library()`` compiles ``libmaskface_mlra.so`` (CUDA kernel + CPU reference, no TensorRT);
``build_plugin_library()`` adds the TensorRT IPluginV3 glue when TensorRT headers are found;
``build_plugin_selftest()`` the C++ self-test driver. Finds nvcc, a host compiler and the headers.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Sequence


from maskface.contracts import KERNEL_LIBRARY_NAME, PLUGIN_LIBRARY_NAME
from maskface.io_utils import file_lock

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_DIR.parent
INCLUDE_DIR = PLUGIN_DIR / "include"
SRC_DIR = PLUGIN_DIR / "src"
BUILD_ROOT = PLUGIN_DIR / "build"

#: GPU architectures of the default build (2080 Ti, A100, A10/3090, L4/4090, H100) + PTX of the last one.
DEFAULT_ARCHS: tuple[str, ...] = ("75", "80", "86", "89", "90")


_KERNEL_SOURCES = ("mlra_kernel.cu", "mlra_reference.cpp")
_PLUGIN_SOURCES = _KERNEL_SOURCES + ("mlra_plugin.cpp",)


class BuildError(RuntimeError):
    """The library could not be built (no nvcc, no TensorRT headers, or a compiler error)."""


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
    with file_lock(root / ".lock"):
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
