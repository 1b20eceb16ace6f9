"""`maskface plot-log RUN/log.jsonl --out curves.png`: the training curves of a run.

Three panels over iterations: the losses (total and each part), the learning rate, and the
validation metric (AP50 for WIDER FACE, NME for AFLW / 300W, from the "val" records). A resumed
run has each iteration once (the trainer drops replayed records), so the curves are continuous.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LOSS_KEYS = ("loss", "loss_cls", "loss_box", "loss_keypoint")


def read_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, val records) of a log.jsonl, each sorted by iteration. A line cut short by
    a crash is skipped; anything else that is not JSON is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path} (maskface train writes OUTPUT/log.jsonl)")
    lines = path.read_text().splitlines()
    train, val = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line of a run killed while writing it
                continue
            raise ValueError(f"{path}:{n}: not a JSON record") from None
        if record.get("type") == "train":
            train.append(record)
        elif record.get("type") == "val":
            val.append(record)
    if not train and not val:
        raise ValueError(f"{path}: no train or val records yet")
    return sorted(train, key=lambda r: r["iter"]), sorted(val, key=lambda r: r["iter"])


def best_value(record: dict) -> float | None:
    """The best validation value in the metric's own units: the lr schedule stores a higher-is-better
    score, i.e. -NME for an NME metric (engine/trainer.py, validation_score)."""
    best = record.get("best")
    if best is None:
        return None
    return -best if record.get("metric") == "nme" else best


def plot_training_log(path: str | Path, out: str | Path, title: str | None = None) -> Path:
    from ..evaluation.plots import _new_figure, _save

    train, val = read_log(path)
    fig = _new_figure(7.0, 9.0)
    ax_loss, ax_lr, ax_val = (fig.add_subplot(3, 1, i) for i in (1, 2, 3))
    iters = [r["iter"] for r in train]
    for key in LOSS_KEYS:
        values = [r.get(key) for r in train]
        if any(v is not None for v in values):
            ax_loss.plot(iters, values, lw=2 if key == "loss" else 1, label=key)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_ylim(bottom=0)
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_lr.plot(iters, [r.get("lr") for r in train], color="tab:gray")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    metric = val[-1].get("metric", "ap50") if val else "ap50"
    if val:
        ax_val.plot([r["iter"] for r in val], [r.get(metric) for r in val], marker="o", color="tab:red")
        best = best_value(val[-1])
        if best is not None:
            ax_val.axhline(best, ls="--", lw=1, color="tab:red", alpha=0.5, label=f"best {best:.4f}")
            ax_val.legend(loc="lower right", fontsize=8)
        if metric == "ap50":
            ax_val.set_ylim(0, 1)
        else:
            ax_val.set_ylim(bottom=0)
    else:
        ax_val.text(0.5, 0.5, "no validation record yet", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_ylabel(f"validation {metric}")
    ax_val.set_xlabel("iteration")
    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(True, alpha=0.3)
        if iters or val:
            ax.set_xlim(0, max(iters + [r["iter"] for r in val]))
    ax_loss.set_title(title or f"training log: {path}")
    return _save(fig, out)


def run(args: argparse.Namespace) -> int:
    out = plot_training_log(args.log, args.out, args.title)
    print(f"plot -> {out}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot-log", help="plot a training run's log.jsonl (losses, lr, validation metric)",
                              description=__doc__)
    p.add_argument("log", help="the run's log.jsonl (maskface train --output OUTPUT writes OUTPUT/log.jsonl)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default=None, help="plot title (default: the log's path)")
    p.set_defaults(func=run)
    return p
