"""The WIDER FACE submission layout: one text file per image,
``<pred_dir>/<event>/<image name without extension>.txt``::

    <image name>            (not checked, as in the official reader)
    <N>
    x y w h score           (N lines; extra columns are ignored)

:func:`write_predictions` writes one (atomically), :func:`read_predictions` reads a whole folder.
A missing prediction file is an error unless ``allow_missing=True`` (then it is, as in the official
reader, an image without predictions); malformed files are errors naming the file (the official
reader prints "Invalid format" and treats the image as empty).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maskface.evaluation.ap import xyxy_to_xywh
from maskface.evaluation.widerface_gt import WiderFaceGT, strip_image_ext
from maskface.io_utils import atomic_write_bytes


class PredictionFormatError(ValueError):
    """A prediction file that does not follow the submission layout (the message names it)."""


def prediction_path(pred_dir: str | os.PathLike, event: str, image_name: str) -> Path:
    return Path(pred_dir) / event / f"{strip_image_ext(image_name)}.txt"


def write_predictions(
    out_dir: str | os.PathLike,
    event: str,
    image_name: str,
    boxes,
    scores,
    box_format: str = "xyxy",
    allow_negative_sizes: bool = False,
) -> Path:
    """Write one image's detections as ``<out_dir>/<event>/<image>.txt`` (submission layout).

    ``boxes``: ``[N, 4]`` in original image pixels, **xyxy by default** (what the Predictor
    returns; ``w = x2 - x1``, ``h = y2 - y1``), or ``box_format="xywh"`` for boxes that already
    are ``(x, y, w, h)``. ``scores``: ``[N]``. ``image_name`` may carry a folder and an image
    extension; both are dropped. The file is written to a temporary name and renamed.
    Returns the path written.
    """
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"{event}/{image_name}: {b.shape[0]} boxes but {s.shape[0]} scores")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise ValueError(f"{event}/{image_name}: boxes or scores are not finite")
    if box_format == "xyxy":
        b = xyxy_to_xywh(b)
    negative = np.flatnonzero((b[:, 2] < 0) | (b[:, 3] < 0))
    if negative.size and not allow_negative_sizes:
        k = int(negative[0])
        raise ValueError(f"{event}/{image_name}: box {k} has a negative size (w {b[k, 2]:g}, h {b[k, 3]:g}); "
                         f"{negative.size} such box(es) in all: xyxy boxes need x2 >= x1 and y2 >= y1 "
                         "(allow_negative_sizes=True keeps them, as the official code would score them)")
    stem = strip_image_ext(image_name)
    lines = [stem, str(b.shape[0])]
    lines += [f"{x:.4f} {y:.4f} {w:.4f} {h:.4f} {sc:.9g}" for (x, y, w, h), sc in zip(b.tolist(), s.tolist())]
    path = prediction_path(out_dir, event, stem)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def read_prediction_file(path: str | os.PathLike, allow_negative_sizes: bool = False) -> np.ndarray:
    """One submission file -> float64 ``[N, 5]`` ``(x, y, w, h, score)`` in file order.

    Raises FileNotFoundError for a missing file and PredictionFormatError (naming the file) for
    an empty file, a missing/invalid count line, fewer or more box lines than announced, lines
    with fewer than five numbers, or non-finite values. ``N = 0`` gives a ``[0, 5]`` array.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"prediction file not found: {path}") from None
    except UnicodeDecodeError:
        raise PredictionFormatError(f"{path}: not a text file") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise PredictionFormatError(f"{path}: empty file (expected an image-name line, a count line "
                                    f"and 'x y w h score' lines)")
    if len(lines) < 2:
        raise PredictionFormatError(f"{path}: no count line after the image-name line")
    try:
        count_f = float(lines[1].strip())
    except ValueError:
        raise PredictionFormatError(f"{path}: line 2 must be the number of boxes, got {lines[1]!r}") from None
    if not count_f.is_integer() or count_f < 0:
        raise PredictionFormatError(f"{path}: line 2 must be a non-negative integer, got {lines[1]!r}")
    count = int(count_f)
    body = lines[2:]
    if len(body) != count:
        raise PredictionFormatError(f"{path}: announces {count} boxes but has {len(body)} box lines")
    if count == 0:
        return np.zeros((0, 5), dtype=np.float64)
    rows = [line.replace(",", " ").split() for line in body]
    if all(len(r) == 5 for r in rows):
        try:
            arr = np.array(rows, dtype=np.float64)
        except ValueError:
            arr = None
    else:
        arr = None
    if arr is None:
        out = np.empty((count, 5), dtype=np.float64)
        for k, r in enumerate(rows):
            if len(r) < 5:
                raise PredictionFormatError(f"{path}: line {k + 3} has {len(r)} values, need 'x y w h score'")
            try:
                out[k] = [float(v) for v in r[:5]]
            except ValueError:
                raise PredictionFormatError(f"{path}: line {k + 3} is not numeric: {body[k]!r}") from None
        arr = out
    if not np.isfinite(arr).all():
        raise PredictionFormatError(f"{path}: non-finite values (nan/inf)")
    negative = np.flatnonzero((arr[:, 2] < 0) | (arr[:, 3] < 0))
    if negative.size and not allow_negative_sizes:
        k = int(negative[0])
        raise PredictionFormatError(f"{path}: line {k + 3} has a negative box size (w {arr[k, 2]:g}, h {arr[k, 3]:g}); "
                                    "boxes are 'x y w h score' with w, h >= 0 (a detector never makes them; "
                                    "allow_negative_sizes=True scores them as the official code would)")
    return arr


def read_predictions(
    pred_dir: str | os.PathLike,
    gt: WiderFaceGT,
    allow_missing: bool = False,
    progress: bool = False,
    allow_negative_sizes: bool = False,
) -> list[np.ndarray | None]:
    """Read ``<pred_dir>/<event>/<image>.txt`` for every image of ``gt`` (same order).

    A missing file is an error listing the missing files (first 10 and a count), unless
    ``allow_missing`` (then its entry is ``None``: an image without predictions).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    items = zip(gt.image_events, gt.image_names)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(gt), desc="read predictions", unit="img")
    out: list[np.ndarray | None] = []
    missing: list[Path] = []
    for event, name in items:
        path = prediction_path(pred_dir, event, name)
        try:
            out.append(read_prediction_file(path, allow_negative_sizes))
        except FileNotFoundError:
            missing.append(path)
            out.append(None)
    if missing and not allow_missing:
        shown = "\n  ".join(str(p) for p in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        hint = ""
        if len(missing) == len(gt):
            hint = (f"\n(no file at all: is {pred_dir} the folder holding the event folders, "
                    f"e.g. {pred_dir / gt.image_events[0]}?)")
        raise FileNotFoundError(
            f"{len(missing)} of {len(gt)} prediction files missing under {pred_dir}:\n  {shown}{more}{hint}\n"
            f"(use allow_missing / --allow-missing to count them as images without detections, "
            f"as the official script does)"
        )
    return out
