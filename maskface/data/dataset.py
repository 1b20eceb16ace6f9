"""The torch side of the data stage: a Dataset over FaceRecords, tensor conversion and collate.

Item contract (what the model consumes):
  image  float32 [3, H, W], RGB, (pixel - pixel_mean) / pixel_std for 0..255 input
  target {"boxes": float32 [G, 4] x1 y1 x2 y2 in pixels of that tensor,
          "landmarks": float32 [G, K, 2], "landmark_valid": bool [G, K]}
A face "has landmarks" when any of its points is valid.

The readers of each source (widerface.py, aflw.py, w300.py) build on this module;
maskface.data.registry.build_dataset picks one by name.

Augmentations are drawn from a numpy Generator seeded by (seed, epoch, index), so an item is
the same in every worker process and after a resume; call `set_epoch` once per epoch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from maskface.config import InputConfig
from maskface.data.structures import DataReport, FaceRecord, ImageReadError, Sample

# A transform maps (sample, rng) to a new sample; it never modifies its input in place.
Transform = Callable[[Sample, np.random.Generator], Sample]


def read_image(path: str | Path, source: str = "") -> np.ndarray:
    """uint8 BGR [H, W, 3]; raises ImageReadError naming the file (and its annotation line)."""
    where = f" (annotated at {source})" if source else ""
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}{where}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot decode image {path}{where}: not an image or a truncated file")
    return image


def to_tensor(sample: Sample, input_config: InputConfig | None = None) -> tuple[torch.Tensor, dict]:
    """Raw sample (uint8 BGR + numpy) -> normalised RGB float tensor and the target dict."""
    cfg = input_config or InputConfig()
    mean = np.asarray(cfg.pixel_mean, np.float32)
    std = np.asarray(cfg.pixel_std, np.float32)
    rgb = sample.image[:, :, ::-1].astype(np.float32)
    image = torch.from_numpy(np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1)))
    target = {
        "boxes": torch.from_numpy(np.ascontiguousarray(sample.boxes, dtype=np.float32)).reshape(-1, 4),
        "landmarks": torch.from_numpy(np.ascontiguousarray(sample.landmarks, dtype=np.float32)),
        "landmark_valid": torch.from_numpy(np.ascontiguousarray(sample.landmark_valid, dtype=bool)),
    }
    return image, target


def collate(batch: Sequence[tuple[torch.Tensor, dict]], size_divisibility: int = 1):
    """Stack images into [B, 3, H, W] and keep the targets as a list of dicts.

    Training crops all have one size and are stacked as they are. Images of different sizes
    (validation) are padded at the bottom/right to the largest size, rounded up to
    `size_divisibility`, with zeros (= the mean colour after normalisation); boxes and
    landmarks need no change since padding is at the far side.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    if all(tuple(im.shape[1:]) == (h, w) for im in images):
        return torch.stack(images), targets
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[1], : im.shape[2]] = im
    return out, targets


class FaceDataset(torch.utils.data.Dataset):
    """Images + faces from a list of FaceRecords (built by the readers of each source)."""

    num_landmarks: int = 5

    def __init__(
        self,
        records: list[FaceRecord],
        num_landmarks: int,
        transform: Transform | None = None,
        input_config: InputConfig | None = None,
        seed: int = 0,
        report: DataReport | None = None,
    ):
        self.records = list(records)
        self.num_landmarks = num_landmarks
        self.transform = transform
        self.input_config = input_config or InputConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.report = report if report is not None else DataReport(type(self).__name__)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_raw(self, index: int) -> Sample:
        rec = self.records[index]
        image = read_image(rec.image_path, rec.source)
        return Sample(image, rec.boxes.copy(), rec.landmarks.copy(), rec.landmark_valid.copy())

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if epoch is None else int(epoch), int(index)])

    def get_sample(self, index: int, epoch: int | None = None) -> Sample:
        """The raw sample after the transform (still numpy)."""
        sample = self.load_raw(index)
        if self.transform is not None:
            sample = self.transform(sample, self.rng(index, epoch))
        return sample

    def __getitem__(self, key):
        """`dataset[i]` uses the epoch of `set_epoch`; `dataset[(i, epoch)]` names the epoch, so a
        sampler can drive augmentation in worker processes (whose dataset copies never see
        set_epoch) and a resumed run draws the same augmentations."""
        index, epoch = (key if isinstance(key, tuple) else (key, None))
        return to_tensor(self.get_sample(int(index), epoch), self.input_config)
