"""PNG plots of evaluation results: WIDER FACE precision-recall curves and landmark CED curves.

Uses matplotlib's object API with the Agg canvas directly (no pyplot, no global backend
switch), so it works headless and does not disturb a caller's matplotlib state. Files are written
to a temporary name in the target folder and renamed into place.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from maskface.io_utils import atomic_write

_COLOURS = {"easy": "tab:green", "medium": "tab:orange", "hard": "tab:red"}


def _new_figure(width: float = 6.4, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: plots are written as .png")
    atomic_write(out, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    return out


def plot_pr_curves(curves, out_path: str | os.PathLike, title: str = "WIDER FACE validation") -> Path:
    """Precision-recall curves, one per setting, AP in the legend.

    ``curves``: a :class:`~maskface.evaluation.widerface.WiderFaceResult`, or a mapping
    ``setting -> (recall, precision, ap)``.
    """
    if hasattr(curves, "curves"):
        curves = {k: (v.recall, v.precision, v.ap) for k, v in curves.curves.items()}
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision, ap) in curves.items():
        r = np.asarray(recall, np.float64)
        p = np.asarray(precision, np.float64)
        ok = np.isfinite(r) & np.isfinite(p)
        ax.plot(r[ok], p[ok], lw=2, color=_COLOURS.get(name), label=f"{name}: AP {ap:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, out_path)


def plot_ced_curves(
    errors: Mapping[str, np.ndarray] | np.ndarray,
    out_path: str | os.PathLike,
    max_error: float = 0.1,
    title: str = "Cumulative error distribution",
    xlabel: str = "NME",
    threshold: float | None = None,
) -> Path:
    """CED curves (fraction of faces with NME <= x) for one or several error arrays.

    ``errors``: per-face NME (``inf`` for unmatched faces) or ``{label: errors}``. The legend
    shows AUC@``threshold`` (default ``max_error``) and the failure rate.
    """
    from maskface.evaluation.landmarks import auc_at, ced_curve, failure_rate

    if not isinstance(errors, Mapping):
        errors = {"": errors}
    t = max_error if threshold is None else threshold
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    for label, e in errors.items():
        x, y = ced_curve(e, max_error, 1001)
        text = f"AUC@{t:g} {auc_at(e, t):.4f}, FR@{t:g} {100 * failure_rate(e, t):.2f}%"
        ax.plot(x, y, lw=2, label=f"{label}: {text}" if label else text)
    ax.set_xlim(0, max_error)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Fraction of faces")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out_path)
