"""The options of a training run (`maskface train`, engine/trainer.py), in a module of their own
so that `maskface train --help` reads the defaults without importing torch or OpenCV."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import WIDER_AREA_RANGE


@dataclass
class TrainOptions:
    data: str  # KIND:PATH, e.g. widerface:/data/widerface
    output_dir: str = "runs/maskface"
    val_data: str | None = None  # default: the same root, split `val_split`; "none" disables
    train_split: str = "train"
    val_split: str | None = None  # default: val (WIDER FACE), holdout (AFLW, 300W: part of train_split)
    val_holdout_fraction: float = 0.05  # share of the train images held out when val_split is "holdout"
    config: str = "r50"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # {"fpn": {"channels": 64}, ...}
    backbone_weights: str | None = None
    # Start a new run from another checkpoint's weights (name and shape matching, minus init_exclude),
    # and train only the modules in train_only (engine/partial_training.py). Empty: the whole model.
    init_weights: str | None = None
    init_exclude: tuple[str, ...] = ()
    train_only: tuple[str, ...] = ()
    batch_size: int = 8  # per process
    max_iter: int = 200_000
    base_lr: float = 1e-2
    warmup_iters: int = 5000
    warmup_start_lr: float = 1e-4
    min_lr: float = 1e-4
    lr_decay: float = 0.1
    patience: int = 2  # evaluations without improvement before a decay
    lr_steps: tuple[int, ...] = ()  # also decay at these iterations (none in the paper's recipe)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eval_period: int = 5000
    checkpoint_period: int = 1000
    log_period: int = 20
    crop_size: int | None = None  # 640 (WIDER FACE) / 480 (AFLW, 300W)
    scale_range: tuple[float, float] = (0.5, 2.5)
    area_range: tuple[float, float] = WIDER_AREA_RANGE
    face_size_range: tuple[float, float] = (150.0, 450.0)
    max_rotation: float = 30.0
    color: bool = True
    val_max_side: int | None = 1024
    val_max_images: int | None = None
    val_score_threshold: float = 0.02
    # What ranks checkpoints and drives the plateau rule: "auto" = AP50 for WIDER FACE, NME for
    # AFLW / 300W; "nme" on WIDER FACE (inter-ocular) suits a run that trains only the keypoint head.
    val_metric: str = "auto"
    num_workers: int = 4
    seed: int = 0
    amp: str = "auto"  # auto (on CUDA: bf16 if supported else fp16), fp16, bf16, off
    device: str = "auto"
    resume: bool = True  # continue from output_dir/last.pth when it exists
    progress: bool = True
    # NHWC activations: the same maths, 0.78x the time of a demo-preset step on this 2-core CPU
    # (oneDNN convolutions prefer it); not bit-identical to NCHW, so a run keeps one layout.
    channels_last: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
