"""The CPU reference under AddressSanitizer + UBSan (g++ -fsanitize=address,undefined): NaN / inf ROI
coordinates, batch indices outside the batch (and NaN / inf ones) and huge ROIs with the adaptive
sampling ratio pool zeros, with no out-of-bounds read, no float -> int conversion of NaN / inf and no
signed overflow; the adaptive sample grid is clamped (mlra::kMaxSamplesPerAxis), so a 1e30-pixel ROI
ends at once. The driver is plugins/tools/reference_edge_cases.cpp; its expected values are hand-made
(every map holds the constant 3: a ROI that samples inside pools 3, one that must not pools 0)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from plugins import binding

DRIVER = binding.PLUGIN_DIR / "tools" / "reference_edge_cases.cpp"
REFERENCE = binding.SRC_DIR / "mlra_reference.cpp"


@pytest.fixture(scope="module")
def sanitized_driver(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    exe = tmp_path_factory.mktemp("asan") / "reference_edge_cases"
    cmd = [gxx, "-std=c++17", "-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-I", str(binding.INCLUDE_DIR), str(REFERENCE), str(DRIVER), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return exe


def test_reference_edge_cases_pool_zeros_without_undefined_behaviour(sanitized_driver):
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    proc = subprocess.run([str(sanitized_driver)], capture_output=True, text=True, timeout=120, env=env)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runtime error" not in proc.stderr and "AddressSanitizer" not in proc.stderr, proc.stderr
    assert "ALL PASS" in proc.stdout and "FAIL" not in proc.stdout
    # Every family of cases ran (controls that sample the map, NaN/inf, batch, huge ROIs, the ratio limit).
    for name in ("inside_roi_pools_the_map", "nonfinite_coords_4_sampling_0", "nonfinite_coords_7_sampling_2",
                 "batch_index_5", "batch_index_1.9_truncates_to_1", "huge_roi_adaptive_0", "whole_image_adaptive",
                 "sampling_ratio_65_refused"):
        assert f"PASS {name}\n" in proc.stdout, name
    assert proc.stdout.count("PASS ") == 32
