"""Where the trained demo checkpoint lives (package data), and how it is written from a run.

The checkpoint holds the model weights (FP32, ~10 MB), the config and the training facts
(iteration, validation metrics); it is read with weights_only=True like every checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "maskface_demo.pth"


def demo_checkpoint() -> Path:
    """The shipped demo checkpoint, or a clear error when this installation lacks it."""
    if not DEMO_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the demo checkpoint {DEMO_CHECKPOINT} is missing from this installation; pass --checkpoint PATH, "
            "or train one (maskface demo-data, then maskface train --config demo; see maskface/demo/MODEL_CARD.md)")
    return DEMO_CHECKPOINT


def export_demo_checkpoint(run_checkpoint: str | Path, out: str | Path = DEMO_CHECKPOINT,
                           facts: dict[str, Any] | None = None) -> Path:
    """Copy the model part of a training checkpoint (no optimizer / RNG state) with `facts`."""
    from ..checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save, read_checkpoint

    data = read_checkpoint(run_checkpoint)
    slim = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": data["config"], "model": data["model"],
            "iteration": int(data.get("iteration", 0)), "facts": dict(facts or {})}
    out = Path(out)
    atomic_torch_save(slim, out)
    return out
