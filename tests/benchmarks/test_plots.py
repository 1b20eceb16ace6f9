"""The benchmark charts do not mislead: latency stages are side-by-side bars (never stacked on the
log axis, so a 0.1 ms NMS stays visible next to a 1 s detector); serving y-axes start at 0."""
from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")

from benchmarks import latency, serving  # noqa: E402


def _capture(monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    bars, figures = [], []
    original_bar, original_save = Axes.bar, Figure.savefig

    def bar(self, x, height, *args, **kwargs):
        bars.append({"bottom": kwargs.get("bottom"), "heights": list(height), "label": kwargs.get("label")})
        return original_bar(self, x, height, *args, **kwargs)

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", bar)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return bars, figures


def _stage(ms):
    return {"median": ms, "p90": ms}


def test_latency_chart_groups_stages_instead_of_stacking(tmp_path, monkeypatch):
    bars, figures = _capture(monkeypatch)
    row = {"backbone": "mbv2", "size": "640x480", "backend": "torch-fp32", "device_kind": "cpu", "trained": False,
           "detector_ms": _stage(1000.0), "nms_ms": _stage(0.1), "e2e_keypoints_ms": _stage(40.0),
           "e2e_ms": _stage(1040.1), "keypoints": {"1": {"per_face_ms": _stage(30.0)}}}
    report = {"rows": [row], "settings": {"faces": [1]}, "environment": {"device_name": "test CPU", "threads": 2},
              "paper_table7": [{"unit": "ms / image", "ms": 20.0, "method": "MaskFace", "backbone": "ResNet-50",
                                "hardware": "NVIDIA GeForce RTX 2080 Ti"}]}
    assert latency.plot(report, tmp_path / "latency.png")
    assert all(b["bottom"] is None for b in bars)  # nothing stacked
    nms = [b for b in bars if b["label"] == "NMS"]
    assert nms and nms[0]["heights"] == [0.1]
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 0.1  # the NMS bar is inside the axis


def test_serving_chart_axes_start_at_zero(tmp_path, monkeypatch):
    _, figures = _capture(monkeypatch)
    levels = [{"concurrency": c, "throughput_rps": 10.0 + c, "latency_ms": {"p50": 300.0 + c, "p90": 320.0 + c,
                                                                              "p99": 340.0 + c}} for c in (1, 2, 4)]
    report = {"levels": levels, "settings": {"model": "maskface", "address": "127.0.0.1:8000", "protocol": "http"},
              "server": {"server_version": "2.51.0"}}
    assert serving.plot(report, tmp_path / "serving.png")
    assert [ax.get_ylim()[0] for ax in figures[0].axes] == [0.0, 0.0]
