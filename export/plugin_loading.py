"""The MultiLevelRoIAlign plugin library for a TensorRT runtime: found ($MASKFACE_PLUGIN_LIBRARY) or built
from plugins/ against headers of the runtime's major version, loaded, its creator checked."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from maskface.contracts import PLUGIN_LIBRARY_ENV, PLUGIN_LIBRARY_NAME, PLUGIN_NAMESPACE, PLUGIN_OP_NAME, PLUGIN_OP_VERSION


class PluginLoadError(RuntimeError):
    """The plugin library could not be loaded, or it did not register the MultiLevelRoIAlign creator."""


def version_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


# --------------------------------------------------------------------------------------------- plugin


def _tensorrt_headers_for_major(major: int) -> Path | None:
    """TensorRT include folder whose NvInferVersion.h has the runtime's major version."""
    from plugins import binding

    candidates: list[Path] = []
    for var, sub in (("TensorRT_INCLUDE_DIR", ""), ("TensorRT_ROOT", "include")):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / sub)
    candidates += sorted((binding.REPO_ROOT / "third_party").glob("TensorRT*/include"), reverse=True)
    candidates += binding.third_party_tensorrt_includes()
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
                   Path("/usr/local/TensorRT/include"), Path("/usr/include")]
    for c in candidates:
        headers = (c / "NvInferRuntime.h").is_file() and (c / "NvInferVersion.h").is_file()
        if headers and version_major(binding.tensorrt_header_version(c)) == major:
            return c.resolve()
    return None


def resolve_plugin_library(path: str | os.PathLike | None = None, trt_major: int | None = None,
                           archs: str | Sequence[str] | None = None) -> Path:
    """The plugin library to load: `path`, else $MASKFACE_PLUGIN_LIBRARY, else built from plugins/
    against TensorRT headers of the same major version as the runtime (a plugin compiled against
    TensorRT 11 headers does not load into TensorRT 10 and vice versa). Raises PluginLoadError."""
    if path is None and os.environ.get(PLUGIN_LIBRARY_ENV):
        path = os.environ[PLUGIN_LIBRARY_ENV]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PluginLoadError(f"plugin library {path} not found")
        return path.resolve()
    from plugins import binding

    include = _tensorrt_headers_for_major(trt_major) if trt_major is not None else binding.find_tensorrt_include()
    if include is None:
        raise PluginLoadError(
            f"no TensorRT {trt_major or ''} headers to build {PLUGIN_LIBRARY_NAME} (set TensorRT_ROOT / "
            "TensorRT_INCLUDE_DIR, or pass a prebuilt library)")
    try:
        return binding.build_plugin_library(archs=archs, tensorrt_include=include)
    except binding.BuildError as exc:
        raise PluginLoadError(f"cannot build {PLUGIN_LIBRARY_NAME}: {exc}") from exc


def load_plugin_library(trt, path: str | os.PathLike, check_creator: bool = True):
    """Load the library into `trt`'s plugin registry (``tensorrt`` or ``tensorrt_lean``) and check
    that the MultiLevelRoIAlign creator is registered. Returns the library handle."""
    path = Path(path)
    if not path.is_file():
        raise PluginLoadError(f"plugin library {path} not found")
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(path))
    if handle is None:
        raise PluginLoadError(
            f"{trt.__name__} {getattr(trt, '__version__', '?')} could not load {path} (built against another "
            "TensorRT major version, or missing CUDA libraries?)")
    if check_creator:
        creator = registry.get_creator(PLUGIN_OP_NAME, str(PLUGIN_OP_VERSION), PLUGIN_NAMESPACE)
        if creator is None:
            raise PluginLoadError(f"{path} loaded but registered no {PLUGIN_NAMESPACE}::{PLUGIN_OP_NAME} v{PLUGIN_OP_VERSION} creator")
    return handle
