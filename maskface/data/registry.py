"""``KIND:PATH`` -> the dataset of that source. The one module that knows every reader, so that
the readers can import maskface.data.dataset without it importing them back."""
from __future__ import annotations

from maskface.data.aflw import AFLWDataset
from maskface.data.dataset import FaceDataset
from maskface.data.w300 import W300Dataset
from maskface.data.widerface import WiderFaceDataset

DATASET_KINDS = {"widerface": WiderFaceDataset, "aflw": AFLWDataset, "300w": W300Dataset, "w300": W300Dataset}


def build_dataset(spec: str, split: str = "train", **kwargs) -> FaceDataset:
    """`widerface:PATH`, `aflw:PATH` or `300w:PATH` -> the dataset of that source."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"dataset spec must be KIND:PATH (widerface, aflw, 300w), got {spec!r}")
    dataset_class = DATASET_KINDS.get(kind.lower())
    if dataset_class is None:
        raise ValueError(f"unknown dataset kind {kind.lower()!r} in {spec!r}; use widerface, aflw or 300w")
    return dataset_class(path, split=split, **kwargs)
