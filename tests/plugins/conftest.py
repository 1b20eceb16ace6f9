"""Fixtures of the plugin tests: the libraries are compiled once per session (and cached by source hash).

The test build targets one architecture (MASKFACE_TEST_CUDA_ARCHS, default sm_75) to keep the nvcc step
short; the CMake / build_library default builds sm_75, 80, 86, 89 and 90.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugins import binding

TEST_ARCHS = os.environ.get("MASKFACE_TEST_CUDA_ARCHS", "75")


@pytest.fixture(scope="session")
def mlra_lib():
    if binding.find_nvcc() is None:
        pytest.skip("nvcc not found (no CUDA toolkit): cannot compile the multi-level RoIAlign library")
    path = binding.build_library(archs=TEST_ARCHS)
    return binding.load_library(path)


HEADER_SETS = ("10.16", "11.1")  # shared/third_party/tensorrt/<version>/include (issue 11)
# tensorrt_lean of each major: 11.x in the venv (setup.py's test extra), 10.16 in its own folder
# (scripts/bootstrap.sh installs it there: one Python cannot import two tensorrt_lean versions).
LEAN10_DIR = Path(os.environ.get("MASKFACE_TENSORRT_LEAN10", binding.REPO_ROOT / ".venv" / "tensorrt-lean-10.16"))


def header_dir(version: str) -> Path | None:
    return next((p for p in binding.third_party_tensorrt_includes() if p.parent.name == version), None)


@pytest.fixture(scope="session", params=HEADER_SETS)
def tensorrt_include(request):
    include = header_dir(request.param)
    if include is None:
        pytest.skip(
            f"TensorRT {request.param} headers not found in ../shared/third_party/tensorrt (set "
            f"${binding.THIRD_PARTY_ENV} to the shared/third_party folder): the IPluginV3 glue cannot be compiled"
        )
    return include


@pytest.fixture(scope="session")
def plugin_library(mlra_lib, tensorrt_include):
    return binding.build_plugin_library(archs=TEST_ARCHS, tensorrt_include=tensorrt_include)


def lean_env(major: int) -> dict[str, str] | None:
    """Environment for a Python that imports tensorrt_lean of `major`, or None when it is not installed."""
    import importlib.util

    if major == 10:
        if not (LEAN10_DIR / "tensorrt_lean").is_dir():
            return None
        return dict(os.environ, PYTHONPATH=str(LEAN10_DIR))
    spec = importlib.util.find_spec("tensorrt_lean")
    return dict(os.environ) if spec is not None else None
