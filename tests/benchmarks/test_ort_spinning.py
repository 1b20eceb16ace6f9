"""Smoke test of benchmarks/ort_spinning.py on the tiny preset's graphs (2 rounds): the report is
complete and its paired ratios are the per-round ratios of the times it kept. No time is asserted."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from benchmarks import ort_spinning  # noqa: E402


def test_tiny_run_reports_every_path_and_arrival(tiny_onnx_dir, tmp_path):
    out = tmp_path / "out"
    assert ort_spinning.main(["--onnx-dir", str(tiny_onnx_dir), "--rounds", "2", "--threads", "1", "--out", str(out)]) == 0

    report = json.loads((out / "ort_spinning.json").read_text())
    paths = {row["path"] for row in report["rows"]}
    assert "fp32" in paths and "int8" not in paths  # no --int8-dir; bf16 only where the CPU has it
    assert len(report["rows"]) == 2 * len(paths)
    for row in report["rows"]:
        assert row["arrival"] in ort_spinning.ARRIVALS
        spin, stop = row["runs_ms"]["spinning"], row["runs_ms"]["stopped"]
        assert len(spin) == len(stop) == 2
        assert row["stopped_ms"] == pytest.approx(np.median(stop))
        assert row["stopped_over_spinning"]["median"] == pytest.approx(np.median(np.divide(stop, spin)))
    table = (out / "ort_spinning.md").read_text()
    assert table.count("| fp32 |") == 2


def test_one_round_is_refused():
    with pytest.raises(SystemExit):
        ort_spinning.main(["--onnx-dir", "x", "--rounds", "1"])
