"""Fixtures of the plugin tests: the libraries are compiled once per session (and cached by source hash).

The test build targets one architecture (MASKFACE_TEST_CUDA_ARCHS, default sm_75) to keep the nvcc step
short; the CMake / build_library default builds sm_75, 80, 86, 89 and 90.
"""
from __future__ import annotations

import os

import pytest

from plugins import binding

TEST_ARCHS = os.environ.get("MASKFACE_TEST_CUDA_ARCHS", "75")


@pytest.fixture(scope="session")
def mlra_lib():
    if binding.find_nvcc() is None:
        pytest.skip("nvcc not found (no CUDA toolkit): cannot compile the multi-level RoIAlign library")
    path = binding.build_library(archs=TEST_ARCHS)
    return binding.load_library(path)


@pytest.fixture(scope="session")
def tensorrt_include():
    include = binding.find_tensorrt_include()
    if include is None:
        pytest.skip(
            "TensorRT headers not found (set TensorRT_ROOT / TensorRT_INCLUDE_DIR, or put them in "
            "third_party/TensorRT-*/include): the IPluginV3 glue cannot be compiled"
        )
    return include


@pytest.fixture(scope="session")
def plugin_library(mlra_lib, tensorrt_include):
    return binding.build_plugin_library(archs=TEST_ARCHS, tensorrt_include=tensorrt_include)
