"""What a WIDER FACE evaluation returns: per setting AP and the official PR counts, as JSON."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SettingCurve:
    ap: float
    precision: np.ndarray  # [T], NaN where no proposal passes the threshold (0/0)
    recall: np.ndarray  # [T]
    proposals: np.ndarray  # [T] int: proposals with score >= threshold (the official org_pr_cruve(:,1))
    recalled: np.ndarray  # [T] int: faces recalled (org_pr_cruve(:,2))
    num_faces: int


@dataclass
class WiderFaceResult:
    curves: dict[str, SettingCurve]
    thresholds: np.ndarray
    protocol: str
    iou_threshold: float
    num_images: int
    num_predictions: int
    seconds: float = 0.0

    @property
    def ap(self) -> dict[str, float]:
        return {k: v.ap for k, v in self.curves.items()}

    def to_dict(self, with_curves: bool = True) -> dict:
        def clean(a):
            return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, np.float64)]

        out = {
            "protocol": self.protocol,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "seconds": self.seconds,
            "ap": {k: (None if not np.isfinite(v) else float(v)) for k, v in self.ap.items()},
            "num_faces": {k: v.num_faces for k, v in self.curves.items()},
        }
        if with_curves:
            out["thresholds"] = clean(self.thresholds)
            out["curves"] = {
                k: {"precision": clean(v.precision), "recall": clean(v.recall),
                    "proposals": v.proposals.astype(int).tolist(), "recalled": v.recalled.astype(int).tolist()}
                for k, v in self.curves.items()
            }
        return out

    def summary(self) -> str:
        parts = [f"{k:<6s} AP {v.ap:.4f}  ({v.num_faces} faces)" for k, v in self.curves.items()]
        return "\n".join(parts)
