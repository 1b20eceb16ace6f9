"""Where the trained demo checkpoint lives (package data), how commands fall back to it, and how
it is written from a training run.

The shipped file is the run's whole training state (FP32 weights ~10 MB, SGD momentum, schedule,
RNG, iteration: ~20 MB) plus `facts` (measured accuracy); it is read with weights_only=True like
every checkpoint, and `maskface train` can resume from it.
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


def default_checkpoint(checkpoint: str | None, config: str | None, random_init: bool = False) -> str | None:
    """The checkpoint a command should load: the given one; none (a seeded `config`) when a preset
    or --random-init is asked for; else the shipped demo model. One rule for every command."""
    if checkpoint:
        return checkpoint
    if random_init or config:
        return None
    return str(demo_checkpoint())


def export_demo_checkpoint(run_checkpoint: str | Path, out: str | Path = DEMO_CHECKPOINT,
                           facts: dict[str, Any] | None = None) -> Path:
    """Ship a training checkpoint as the demo model: the whole training state (model, optimizer,
    schedule, RNG, iteration), so that training can go on from the shipped file, plus `facts`."""
    from ..checkpoint import atomic_torch_save, read_checkpoint

    data = read_checkpoint(run_checkpoint)
    data["facts"] = dict(facts or {})
    out = Path(out)
    atomic_torch_save(data, out)
    return out
