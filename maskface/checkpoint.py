"""Checkpoints that embed their config, written atomically and read with weights_only=True.

Layout (plain containers + tensors only, so torch.load(weights_only=True) can read it):
    {"format": "maskface", "format_version": 1, "config": MaskFaceConfig.to_dict(),
     "model": state_dict, ...extra entries (optimizer, scheduler, iteration, rng) from the trainer}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import MaskFaceConfig
from .io_utils import atomic_write

FORMAT = "maskface"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves a half-written checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files a crash mid-save left beside the checkpoints `names` in folder
    (atomic_write's `.<name>.<random>.tmp`). Call it only when no save of those names is running."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: MaskFaceConfig, **extra: Any) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    atomic_torch_save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
                       "model": state, **extra}, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with objects we refuse to load
        raise CheckpointError(f"{path} is not a readable MaskFace checkpoint: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or "config" not in data or "model" not in data:
        raise CheckpointError(
            f"{path} is not a MaskFace checkpoint (expected a dict with format='maskface', config and model); "
            "write checkpoints with maskface.checkpoint.save_checkpoint"
        )
    return data


def checkpoint_config(path: str | Path) -> MaskFaceConfig:
    return MaskFaceConfig.from_dict(read_checkpoint(path)["config"])


def load_weights(model: torch.nn.Module, path_or_data: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint into `model`; refuses one written for another architecture, naming both."""
    data = path_or_data if isinstance(path_or_data, dict) else read_checkpoint(path_or_data)
    target = _unwrap(model)
    ckpt_cfg = MaskFaceConfig.from_dict(data["config"])
    model_cfg: MaskFaceConfig = target.cfg
    if ckpt_cfg.architecture_dict() != model_cfg.architecture_dict():
        raise CheckpointError(
            "checkpoint was written for another model: checkpoint config "
            f"{ckpt_cfg.name!r} {ckpt_cfg.architecture_dict()} vs model config {model_cfg.name!r} "
            f"{model_cfg.architecture_dict()}; build the model from the checkpoint (maskface.checkpoint.load_model)"
        )
    target.load_state_dict(data["model"])
    return data


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """A model built from the checkpoint's own config, weights loaded, in eval mode."""
    from .modeling.maskface import MaskFace

    data = read_checkpoint(path)
    cfg = MaskFaceConfig.from_dict(data["config"])
    cfg.backbone.weights = None  # the checkpoint carries the trained backbone
    model = MaskFace(cfg)
    load_weights(model, data)
    return model.to(map_location).eval()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
