"""Shared fixtures of the benchmark smoke tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_graphs):
    """The folder of tests/conftest.py's tiny_graphs (what --onnx-dir takes)."""
    return tiny_graphs[1]
