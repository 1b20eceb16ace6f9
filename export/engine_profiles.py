"""Optimization-profile shapes of the two engines (min / opt / max per input) from the graphs' declared
shapes and the requested ranges (image sides multiples of 64, batch, faces)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from maskface.serving.manifest import DEFAULT_MAX_BATCH, DEFAULT_MAX_FACES, DEFAULT_MAX_SIZE

IMAGE_INPUT = "images"
ROIS_INPUT = "rois"
SIZE_MULTIPLE = 64

# --------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ProfileRanges:
    """The shapes the engines accept. Image sides are multiples of 64 (the detector's contract)."""

    max_size: int = DEFAULT_MAX_SIZE
    max_batch: int = DEFAULT_MAX_BATCH
    max_faces: int = DEFAULT_MAX_FACES
    min_size: int = SIZE_MULTIPLE
    opt_size: tuple[int, int] = (480, 640)  # (H, W)
    opt_batch: int = 1
    min_faces: int = 0
    opt_faces: int = 16

    def __post_init__(self):
        for name in ("max_size", "min_size"):
            value = getattr(self, name)
            if value <= 0 or value % SIZE_MULTIPLE:
                raise ValueError(f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {value}")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        if not 1 <= self.max_batch:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0 <= self.min_faces <= self.max_faces or self.max_faces < 1:
            raise ValueError(f"need 0 <= min_faces <= max_faces and max_faces >= 1, got {self.min_faces}, {self.max_faces}")

    def resolved(self) -> ProfileRanges:
        """opt values clamped into [min, max] and rounded to multiples of 64."""
        def side(v: int) -> int:
            v = int(math.ceil(v / SIZE_MULTIPLE) * SIZE_MULTIPLE)
            return min(max(v, self.min_size), self.max_size)

        return ProfileRanges(
            max_size=self.max_size, max_batch=self.max_batch, max_faces=self.max_faces, min_size=self.min_size,
            opt_size=(side(self.opt_size[0]), side(self.opt_size[1])),
            opt_batch=min(max(self.opt_batch, 1), self.max_batch),
            min_faces=self.min_faces, opt_faces=min(max(self.opt_faces, self.min_faces, 1), self.max_faces),
        )


Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]


def _feature_stride(name: str) -> int | None:
    """m2..m6 -> 4..64 (the exporter's names: m<level>, stride 2^level)."""
    if len(name) >= 2 and name[0] == "m" and name[1:].isdigit():
        return 2 ** int(name[1:])
    return None


def _fill(name: str, declared: Sequence[int], wanted: Sequence[int]) -> Shape:
    if len(declared) != len(wanted):
        raise ValueError(f"input {name}: the graph declares rank {len(declared)} {tuple(declared)}, the profile needs rank {len(wanted)}")
    out = []
    for axis, (d, w) in enumerate(zip(declared, wanted)):
        if w is None:
            if d is None or d < 0:
                raise ValueError(f"input {name}: axis {axis} is dynamic in the graph but has no profile range")
            out.append(int(d))
        else:
            if d is not None and d >= 0 and d != w:
                raise ValueError(f"input {name}: axis {axis} is {d} in the graph, the profile asks {w}")
            out.append(int(w))
    return tuple(out)


def profile_shapes(input_shapes: Mapping[str, Sequence[int]], ranges: ProfileRanges) -> ProfileShapes:
    """(min, opt, max) shape of every network input, from the input's declared shape (-1 = dynamic;
    static axes such as channels are kept) and the image / face ranges.

    images [B, 3, H, W]; m<k> [B, C, ceil(H / 2^k), ceil(W / 2^k)]; rois [N, 5].
    """
    r = ranges.resolved()
    sizes = {"min": (1, r.min_size, r.min_size), "opt": (r.opt_batch, *r.opt_size),
             "max": (r.max_batch, r.max_size, r.max_size)}
    faces = {"min": r.min_faces, "opt": r.opt_faces, "max": r.max_faces}
    out: ProfileShapes = {}
    for name, declared in input_shapes.items():
        declared = [None if d is None else int(d) for d in declared]
        stride = _feature_stride(name)
        triple = []
        for which in ("min", "opt", "max"):
            b, h, w = sizes[which]
            if name == IMAGE_INPUT:
                wanted = (b, None, h, w)
            elif stride is not None:
                wanted = (b, None, -(-h // stride), -(-w // stride))
            elif name == ROIS_INPUT:
                wanted = (faces[which], None)
            else:
                raise ValueError(f"no profile rule for input {name!r} (known: images, m<level>, rois)")
            triple.append(_fill(name, declared, wanted))
        out[name] = tuple(triple)
    return out


def _profiles_json(shapes: ProfileShapes) -> dict[str, dict[str, list[int]]]:
    return {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in shapes.items()}
