"""Training part of a model from another's weights (`maskface train --init-weights / --train-only`).

The use: give a trained detector a new keypoint head (another depth or width) and train only that
head, so that the detector's boxes stay exactly as they were. As detectron2's MODEL.WEIGHTS, the
start is a weights file, not a resumable state; a run that has its own last.pth resumes from that.
"""
from __future__ import annotations

import torch

from ..checkpoint import read_checkpoint


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_prefixes(model: torch.nn.Module, prefixes: tuple[str, ...], flag: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(_under(n, (p,)) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"{flag}: no parameters under {unknown}; the model's modules are {tops} "
                         "(dotted names reach deeper, e.g. keypoint_head.deconv)")


def init_from_checkpoint(model: torch.nn.Module, path: str, exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Copy every tensor of the checkpoint at `path` whose name and shape match into `model`,
    except those under `exclude` (module names). The rest keep their fresh initialisation.
    Returns {"loaded": [...], "kept_fresh": [...]} (state_dict names)."""
    if exclude:
        _check_prefixes(model, exclude, "--init-exclude")
    source = read_checkpoint(path)["model"]
    target = model.state_dict()
    loaded, fresh = [], []
    with torch.no_grad():
        for name, tensor in target.items():
            other = source.get(name)
            if _under(name, exclude) or other is None or other.shape != tensor.shape:
                fresh.append(name)
                continue
            tensor.copy_(other.to(tensor.dtype))
            loaded.append(name)
    if not loaded:
        raise ValueError(f"--init-weights {path}: no tensor matches this model by name and shape; "
                         "is it a checkpoint of the same preset?")
    return {"loaded": loaded, "kept_fresh": fresh}


def train_only(model: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    """Freeze every parameter outside the modules named by `prefixes`; returns how many train."""
    _check_prefixes(model, prefixes, "--train-only")
    count = 0
    for name, param in model.named_parameters():
        keep = _under(name, prefixes) and param.requires_grad
        param.requires_grad_(keep)
        count += int(keep)
    return count
