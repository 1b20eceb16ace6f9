"""benchmarks/gpu_check.sh runs on a GPU machine's own Python: torch, torchvision, numpy, onnx and a
CPU onnxruntime, none of our venv-only packages, nothing pip-installed (docs/ARCHITECTURE.md §6). Here it
runs in its CPU mode with those packages hidden (a sitecustomize that marks them missing, the way a
Python without them answers imports and importlib.util.find_spec)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Installed in our venv (setup.py) but not on the GPU machine.
VENV_ONLY = ("cv2", "scipy", "matplotlib", "tqdm", "skimage", "tritonclient", "pytriton", "tensorrt_lean", "tensorrt")


def test_gpu_check_runs_without_the_venv_only_packages(tmp_path):
    if subprocess.run(["bash", "-c", "command -v nvcc || test -x /usr/local/cuda/bin/nvcc"]).returncode:
        pytest.skip("no nvcc: gpu_check builds the kernel library first")
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {VENV_ONLY!r}:\n"
        "    sys.modules[name] = None  # import raises ImportError, find_spec returns None\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(hide), OMP_NUM_THREADS="1",
               BENCH_CACHE=str(tmp_path / "cache"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "gpu_check finished with status 0" in proc.stdout and "ModuleNotFoundError" not in proc.stdout
    check = json.loads((out / "plugin_check.json").read_text())
    assert check["ok"] is True and check["mode"] == "cpu-only" and check["parity"]
    latency = json.loads((out / "latency.json").read_text())
    assert latency["rows"] and latency["rows"][0]["backbone"] == "mbv2"
