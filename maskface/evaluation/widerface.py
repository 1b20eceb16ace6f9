"""WIDER FACE validation protocol, exactly as the official MATLAB ``eval_tools`` computes it.

Ground truth: the published ``wider_face_val.mat`` (events, image names, ``(x, y, w, h)`` face
boxes stored as int32) and ``wider_{easy,medium,hard}_val.mat`` (per image, the 1-based indices
of the faces that count in that setting, ``gt_list``). :func:`load_widerface_gt` reads them.

Predictions: the official submission layout, one text file per image,
``<pred_dir>/<event>/<image name without extension>.txt``::

    <image name>            (not checked, as in the official reader)
    <N>
    x y w h score           (N lines; extra columns are ignored)

:func:`write_predictions` writes it (atomically), :func:`read_predictions` reads a whole folder.

Protocol (``wider_eval.m`` / ``norm_score.m`` / ``evaluation.m``), reproduced step by step:

1. Each image's boxes are sorted by raw score, descending (stable for ties).
2. Scores are normalised over *all* predictions of the set: ``(s - min) / (max - min)``, with the
   running max / min starting at ``realmin('single')`` / ``realmax('single')``. Those seeds are
   single precision, so MATLAB does the normalisation in single precision; so do we.
3. Per image (skipped when it has no face box or no prediction, but its faces still count):
   every prediction, in score order, takes the ground-truth box of maximal overlap (the first
   one on ties); if the overlap is >= 0.5 and that face is not in the setting's keep list the
   prediction is ignored (not a proposal), otherwise the face is recalled (once). A prediction
   that matches nothing, or a face that is already recalled, stays a proposal (false positive).
4. 1000 thresholds ``1 - t/1000`` (t = 1..1000); at each, per image, the proposals and recalled
   faces among the predictions with normalised score >= threshold are summed over the set.
   precision = recalled / proposals, recall = recalled / (number of faces in the keep lists).
5. AP = VOC area under the precision envelope (``VOCap``), NaN precisions skipped.

The overlap of step 3, ``protocol="matlab"`` (default): the official ``boxoverlap`` runs on the
int32 ground truth, and MATLAB integer arithmetic is sticky (int32 op double -> int32, rounded half
away from zero, saturated; int32 ./ int32 rounds). So predicted coordinates are rounded when they
are clipped against a face, the union is rounded, and the "IoU" itself is the *integer*
``round(inter / union)``, i.e. 1 when IoU >= 0.5 and 0 otherwise; "the face of maximal overlap"
is then the first face (in annotation order) with IoU >= 0.5. We reproduce that integer
arithmetic. Checked against GNU Octave 7.3 (which follows MATLAB's integer and single-precision
rules) running the official functions on noisy synthetic predictions for all 3,226 images: all
3 x 1000 (proposals, recalled) counts and the three APs are identical to the last bit.
``protocol="continuous"`` uses real-valued IoU (+1 pixel convention) and the face of highest IoU,
as the widely used Python port (wondervictor/WiderFace-Evaluation) does; both agree on most
predictions, and papers' numbers come from either.

Deviations (documented, each only hit by degenerate inputs):
- all normalised scores equal (max == min after the single-precision cast): MATLAB divides 0 by
  0, every score becomes NaN and no prediction ever passes a threshold (AP 0). We set every
  normalised score to 1 instead (every prediction counts at every threshold) and warn.
- a missing prediction file is an error here unless ``allow_missing=True`` (then it is, as in
  the official reader, an image without predictions); malformed files are errors naming the file
  (the official reader prints "Invalid format" and treats the image as empty).
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from maskface.evaluation.ap import first_occurrence, voc_ap, xyxy_to_xywh
from maskface.io_utils import atomic_write_bytes

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}
GT_ENV_VAR = "MASKFACE_WIDER_GT"
PROTOCOLS = ("matlab", "continuous")
NUM_THRESHOLDS = 1000
IOU_THRESHOLD = 0.5

_REALMIN_SINGLE = np.float32(np.finfo(np.float32).tiny)  # realmin('single')
_REALMAX_SINGLE = np.float32(np.finfo(np.float32).max)  # realmax('single')
_INT32_MIN = np.iinfo(np.int32).min
_INT32_MAX = np.iinfo(np.int32).max
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)


class PredictionFormatError(ValueError):
    """A prediction file that does not follow the submission layout (the message names it)."""


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


TEXT_GT_FILE = "wider_face_val_bbx_gt.txt"
TEXT_SETTING = "all"


def default_gt_dir() -> Path | None:
    """``$MASKFACE_WIDER_GT`` if set, else None (the ground truth is never looked for outside the
    paths a user gives)."""
    env = os.environ.get(GT_ENV_VAR)
    return Path(env) if env else None


def find_gt_dir(gt_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the four ``.mat`` files; raises FileNotFoundError naming what is missing.

    ``gt_dir`` may also be the path of ``wider_face_val.mat`` itself (its folder is used).
    """
    path = Path(gt_dir) if gt_dir is not None else default_gt_dir()
    if path is None:
        raise FileNotFoundError(
            f"no WIDER FACE ground truth given: pass --gt with eval_tools/ground_truth/ of the official "
            f"evaluation code (it holds {', '.join(GT_FILES.values())}) or with wider_face_split/"
            f"{TEXT_GT_FILE} (all-faces AP only), or set {GT_ENV_VAR}")
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(
            f"WIDER FACE ground-truth folder not found: {path} (pass --gt DIR or set {GT_ENV_VAR}; "
            f"it must hold {', '.join(GT_FILES.values())}, or {TEXT_GT_FILE})"
        )
    missing = [name for name in GT_FILES.values() if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WIDER FACE ground-truth folder {path} lacks {', '.join(missing)}: the easy / medium / hard "
            f"settings need the .mat files of the official evaluation code (eval_tools/ground_truth/); "
            f"from {TEXT_GT_FILE} only an all-faces AP can be computed")
    return path


def text_gt_file(gt: str | os.PathLike | None) -> Path | None:
    """The ``*_bbx_gt.txt`` to read when ``gt`` names one (or a folder with the val file and no
    ``.mat`` files); None when the ``.mat`` ground truth applies."""
    if gt is None:
        gt = default_gt_dir()
        if gt is None:
            return None
    path = Path(gt)
    if path.is_file() and path.name.endswith("_bbx_gt.txt"):
        return path
    if path.is_dir() and not (path / GT_FILES["all"]).is_file():
        for candidate in (path / TEXT_GT_FILE, path / "wider_face_split" / TEXT_GT_FILE):
            if candidate.is_file():
                return candidate
    return None


@dataclass
class WiderFaceGT:
    """The validation ground truth, images in the order of the .mat files (event by event).

    ``boxes[i]``: int32 ``[G_i, 4]`` ``(x, y, w, h)`` as published (placeholder ``0 0 0 0``
    boxes and the few zero/negative-size boxes kept untouched); ``keep[setting][i]``: int64
    0-based indices into ``boxes[i]`` of the faces that count in that setting.
    """

    events: list[str]
    image_events: list[str]
    image_names: list[str]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    source: Path | None = None
    _index: dict = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.image_names)

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self.keep)

    def num_faces(self, setting: str | None = None) -> int:
        """Faces in a setting's keep lists (``None``: every annotated box)."""
        if setting is None:
            return int(sum(b.shape[0] for b in self.boxes))
        return int(sum(k.size for k in self.keep[setting]))

    def index(self, event: str, image_name: str) -> int:
        if self._index is None:
            self._index = {(e, n): i for i, (e, n) in enumerate(zip(self.image_events, self.image_names))}
        return self._index[(event, _strip_image_ext(image_name))]

    def subset(self, events: Iterable[str]) -> "WiderFaceGT":
        """The images of the given events only (in the original order)."""
        wanted = set(events)
        unknown = wanted - set(self.events)
        if unknown:
            raise KeyError(f"unknown WIDER FACE events: {sorted(unknown)}")
        sel = [i for i, e in enumerate(self.image_events) if e in wanted]
        return WiderFaceGT(
            events=[e for e in self.events if e in wanted],
            image_events=[self.image_events[i] for i in sel],
            image_names=[self.image_names[i] for i in sel],
            boxes=[self.boxes[i] for i in sel],
            keep={s: [k[i] for i in sel] for s, k in self.keep.items()},
            source=self.source,
        )


def _mat_str(cell) -> str:
    arr = np.asarray(cell).ravel()
    if arr.size == 0:
        return ""
    return str(arr[0])


def load_widerface_text_gt(path: str | os.PathLike) -> WiderFaceGT:
    """The official text annotation (``wider_face_val_bbx_gt.txt``) as a ground truth with one
    setting, ``"all"``: every face with a positive size and the ``invalid`` flag 0 counts; invalid
    faces stay in the boxes, so a detection on one is ignored (neither true nor false positive),
    as the official script treats faces outside a setting's keep list. The easy / medium / hard
    keep lists are published only in the ``.mat`` files, so this file cannot give those APs.
    """
    import warnings as _warnings

    from maskface.data.structures import DataReport
    from maskface.data.widerface import read_bbx_gt

    path = Path(path)
    report = DataReport(str(path))  # zero-size faces are dropped (they can never be matched)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        records = read_bbx_gt(path, path.parent, report)
    events: list[str] = []
    image_events, image_names, boxes, keep = [], [], [], []
    for rec in records:
        rel = Path(rec.image_path).relative_to(path.parent)
        event = rel.parent.as_posix()
        if event not in events:
            events.append(event)
        image_events.append(event)
        image_names.append(_strip_image_ext(rel.name))
        xyxy = np.asarray(rec.boxes, np.float64).reshape(-1, 4)
        xywh = np.round(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)).astype(np.int32)
        boxes.append(xywh)
        invalid = np.asarray(rec.attributes.get("invalid", np.zeros(len(xywh))), np.int64).reshape(-1)
        keep.append(np.flatnonzero(invalid == 0).astype(np.int64))
    if not records:
        raise ValueError(f"{path}: no image in the annotation file")
    return WiderFaceGT(events, image_events, image_names, boxes, {TEXT_SETTING: keep}, source=path)


def load_widerface_gt(gt_dir: str | os.PathLike | None = None, settings: Sequence[str] = SETTINGS) -> WiderFaceGT:
    """Read ``wider_face_val.mat`` and the per-setting keep lists (see :class:`WiderFaceGT`), or,
    when ``gt_dir`` is a ``*_bbx_gt.txt`` (or a folder with only that), :func:`load_widerface_text_gt`.

    Checks that every setting file lists the same events, images and boxes as
    ``wider_face_val.mat`` (the official script takes the boxes from the setting file).
    """
    text = text_gt_file(gt_dir)
    if text is not None:
        return load_widerface_text_gt(text)
    from scipy.io import loadmat  # scipy is a core dependency; imported lazily to keep import light

    folder = find_gt_dir(gt_dir)
    main = loadmat(str(folder / GT_FILES["all"]))
    events_cell, files_cell, boxes_cell = main["event_list"], main["file_list"], main["face_bbx_list"]
    events: list[str] = []
    image_events: list[str] = []
    image_names: list[str] = []
    boxes: list[np.ndarray] = []
    for i in range(events_cell.shape[0]):
        event = _mat_str(events_cell[i, 0])
        events.append(event)
        files = files_cell[i, 0]
        bbx = boxes_cell[i, 0]
        if files.shape[0] != bbx.shape[0]:
            raise ValueError(f"{folder / GT_FILES['all']}: event {event} has {files.shape[0]} images "
                             f"but {bbx.shape[0]} box lists")
        for j in range(files.shape[0]):
            image_events.append(event)
            image_names.append(_mat_str(files[j, 0]))
            b = np.asarray(bbx[j, 0])
            b = b.reshape(-1, 4) if b.size else np.zeros((0, 4), b.dtype if b.dtype.kind in "iu" else np.int32)
            boxes.append(b)
    keep: dict[str, list[np.ndarray]] = {}
    for setting in settings:
        if setting not in SETTINGS:
            raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")
        path = folder / GT_FILES[setting]
        mat = loadmat(str(path))
        gt_list = mat["gt_list"]
        lists: list[np.ndarray] = []
        n = 0
        for i in range(gt_list.shape[0]):
            if _mat_str(mat["event_list"][i, 0]) != events[i]:
                raise ValueError(f"{path}: event {i} is {_mat_str(mat['event_list'][i, 0])!r}, "
                                 f"{GT_FILES['all']} says {events[i]!r}")
            sub = gt_list[i, 0]
            sub_boxes = mat["face_bbx_list"][i, 0]
            for j in range(sub.shape[0]):
                if n >= len(image_names) or _mat_str(mat["file_list"][i, 0][j, 0]) != image_names[n]:
                    raise ValueError(f"{path}: image list differs from {GT_FILES['all']} at event {events[i]}")
                if not np.array_equal(np.asarray(sub_boxes[j, 0]).reshape(-1, 4), boxes[n]):
                    raise ValueError(f"{path}: boxes of {events[i]}/{image_names[n]} differ from {GT_FILES['all']}")
                k = np.asarray(sub[j, 0]).astype(np.int64).ravel() - 1
                if k.size and (k.min() < 0 or k.max() >= boxes[n].shape[0]):
                    raise ValueError(f"{path}: keep index out of range for {events[i]}/{image_names[n]}")
                lists.append(k)
                n += 1
        if n != len(image_names):
            raise ValueError(f"{path}: {n} images, {GT_FILES['all']} has {len(image_names)}")
        keep[setting] = lists
    return WiderFaceGT(events, image_events, image_names, boxes, keep, source=folder)


# --------------------------------------------------------------------------------------------
# Submission layout: writer and reader
# --------------------------------------------------------------------------------------------


def _strip_image_ext(name: str) -> str:
    return _IMAGE_EXT.sub("", os.path.basename(str(name)))


def prediction_path(pred_dir: str | os.PathLike, event: str, image_name: str) -> Path:
    return Path(pred_dir) / event / f"{_strip_image_ext(image_name)}.txt"


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
    stem = _strip_image_ext(image_name)
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


# --------------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------------


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves away from zero (exact for all doubles)."""
    a = np.abs(x)
    f = np.floor(a)
    r = f + ((a - f) >= 0.5)
    return np.copysign(r, x)


def _sat(x: np.ndarray) -> np.ndarray:
    return np.clip(x, _INT32_MIN, _INT32_MAX)


def _to_int32(x: np.ndarray) -> np.ndarray:
    """double -> int32 the MATLAB way (round half away, saturate), held in int64."""
    return _sat(_round_half_away(np.asarray(x, dtype=np.float64))).astype(np.int64)


def _int_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """MATLAB int32 ``./``: rounded quotient; x/0 saturates to intmax/intmin, 0/0 = 0."""
    num_f = num.astype(np.float64)
    den_f = den.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = num_f / den_f
        q = np.where(den_f == 0, np.sign(num_f) * np.inf, q)
    q = np.nan_to_num(q, nan=0.0, posinf=_INT32_MAX, neginf=_INT32_MIN)
    return _sat(_round_half_away(q)).astype(np.int64)


def overlap_matlab(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """The official ``boxoverlap`` on int32 ground truth: int64 ``[P, G]`` values (0 or 1 for
    sane boxes), as MATLAB's integer arithmetic evaluates it (see the module docstring)."""
    g = np.asarray(gt_xywh)
    if g.dtype.kind not in "iu":  # the published boxes are int32; round anything else like MATLAB would
        g = _to_int32(g)
    g = g.astype(np.int64)
    a1, a2 = g[:, 0], g[:, 1]
    a3, a4 = _sat(a1 + g[:, 2]), _sat(a2 + g[:, 3])
    p = np.asarray(pred_xywh, dtype=np.float64)
    b1, b2 = p[:, 0], p[:, 1]
    b3, b4 = p[:, 0] + p[:, 2], p[:, 1] + p[:, 3]
    x1 = np.maximum(a1[None, :], _to_int32(b1)[:, None])
    y1 = np.maximum(a2[None, :], _to_int32(b2)[:, None])
    x2 = np.minimum(a3[None, :], _to_int32(b3)[:, None])
    y2 = np.minimum(a4[None, :], _to_int32(b4)[:, None])
    w = _sat(_sat(x2 - x1) + 1)
    h = _sat(_sat(y2 - y1) + 1)
    inter = _sat(w * h)
    aarea = _sat(_sat(_sat(a3 - a1) + 1) * _sat(_sat(a4 - a2) + 1))
    barea = ((b3 - b1) + 1) * ((b4 - b2) + 1)
    union = _to_int32(aarea[None, :].astype(np.float64) + barea[:, None])
    union = _sat(union - inter)
    o = _int_divide(inter, union)
    o[(w <= 0) | (h <= 0)] = 0
    return o


_FAST_LIMIT = 16000  # |coordinates| below this: no int32 intermediate can saturate


def assign_faces(
    preds_xywh: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    protocol: str = "matlab",
    iou_threshold: float = IOU_THRESHOLD,
) -> list[np.ndarray]:
    """Per image, per prediction (in the given order): the index of the face the protocol
    assigns, or -1. ``matlab``: the first face of maximal integer overlap (the official
    ``[max_overlap, idx] = max(boxoverlap(...))``) when that overlap is >= ``iou_threshold``;
    ``continuous``: the face of highest real IoU (first on ties) when >= ``iou_threshold``.

    Equal to ``argmax``/``max`` over :func:`overlap_matlab` / :func:`overlap_continuous`, but
    only pairs whose boxes intersect are evaluated (every other pair has overlap 0 and cannot win
    against an overlap >= threshold > 0), and the arithmetic runs once over all images.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    n_img = len(preds_xywh)
    if len(gt_boxes) != n_img:
        raise ValueError(f"{n_img} prediction arrays for {len(gt_boxes)} images")
    p_off = np.zeros(n_img + 1, dtype=np.int64)
    g_off = np.zeros(n_img + 1, dtype=np.int64)
    p_off[1:] = np.cumsum([np.asarray(p).reshape(-1, 4).shape[0] if np.size(p) else 0 for p in preds_xywh])
    g_off[1:] = np.cumsum([np.asarray(g).reshape(-1, 4).shape[0] if np.size(g) else 0 for g in gt_boxes])
    n_pred, n_face = int(p_off[-1]), int(g_off[-1])
    out = np.full(n_pred, -1, dtype=np.int64)
    if n_pred == 0 or n_face == 0:
        return [out[p_off[k]:p_off[k + 1]] for k in range(n_img)]
    P = np.concatenate([np.asarray(p, np.float64).reshape(-1, 4) for p in preds_xywh if np.size(p)])
    b1, b2, b3, b4 = P[:, 0], P[:, 1], P[:, 0] + P[:, 2], P[:, 1] + P[:, 3]
    if protocol == "matlab":
        G = np.concatenate([np.asarray(g).reshape(-1, 4) for g in gt_boxes if np.size(g)])
        G = (G if G.dtype.kind in "iu" else _to_int32(G)).astype(np.int64)
        a1, a2 = G[:, 0], G[:, 1]
        a3, a4 = _sat(a1 + G[:, 2]), _sat(a2 + G[:, 3])
        r1, r2, r3, r4 = _to_int32(b1), _to_int32(b2), _to_int32(b3), _to_int32(b4)
        big_p = np.maximum.reduce([np.abs(r1), np.abs(r2), np.abs(r3), np.abs(r4)]) >= _FAST_LIMIT
        big_g = np.maximum.reduce([np.abs(a1), np.abs(a2), np.abs(a3), np.abs(a4)]) >= _FAST_LIMIT
        # Positive intersection width <=> min(a3, r3) >= max(a1, r1) (likewise for heights), which
        # needs a3 >= a1 and r3 >= r1: boxes failing that get a sentinel that never compares true.
        lo = np.int32(-(2**31) + 1)
        ok_g = (a3 >= a1) & (a4 >= a2)
        ok_p = (r3 >= r1) & (r4 >= r2)
        cmp_g = [x.astype(np.int32) for x in (a1, a2, np.where(ok_g, a3, lo), np.where(ok_g, a4, lo))]
        cmp_p = [x.astype(np.int32) for x in (r1, r2, np.where(ok_p, r3, lo), np.where(ok_p, r4, lo))]
    else:
        G = np.concatenate([np.asarray(g, np.float64).reshape(-1, 4) for g in gt_boxes if np.size(g)])
        a1, a2, a3, a4 = G[:, 0], G[:, 1], G[:, 0] + G[:, 2], G[:, 1] + G[:, 3]
        big_p = np.zeros(n_pred, bool)
        big_g = np.zeros(n_face, bool)
    cbp = np.concatenate(([0], np.cumsum(big_p)))
    cbg = np.concatenate(([0], np.cumsum(big_g)))
    dense_img = (cbp[p_off[1:]] - cbp[p_off[:-1]] > 0) | (cbg[g_off[1:]] - cbg[g_off[:-1]] > 0) | (iou_threshold <= 0)
    pp_parts, gg_parts = [], []
    for k in range(n_img):
        ps, pe, gs, ge = p_off[k], p_off[k + 1], g_off[k], g_off[k + 1]
        if ps == pe or gs == ge:
            continue
        if dense_img[k]:  # huge coordinates (saturation) or a threshold <= 0: exact dense evaluation
            dense = overlap_matlab if protocol == "matlab" else overlap_continuous
            o = dense(P[ps:pe], G[gs:ge])
            best = o.argmax(axis=1)
            hit = o[np.arange(o.shape[0]), best] >= iou_threshold
            out[ps:pe] = np.where(hit, gs + best, -1)
            continue
        if protocol == "matlab":
            g1, g2, g3, g4 = (c[gs:ge] for c in cmp_g)
            q1, q2, q3, q4 = (c[ps:pe, None] for c in cmp_p)
            mask = (g3 >= q1) & (q3 >= g1) & (g4 >= q2) & (q4 >= g2)
        else:
            iw = np.minimum(a3[gs:ge], b3[ps:pe, None]) - np.maximum(a1[gs:ge], b1[ps:pe, None]) + 1
            ih = np.minimum(a4[gs:ge], b4[ps:pe, None]) - np.maximum(a2[gs:ge], b2[ps:pe, None]) + 1
            mask = (iw > 0) & (ih > 0)
        pp, gg = np.nonzero(mask)
        pp_parts.append(pp + ps)
        gg_parts.append(gg + gs)
    if pp_parts:
        pp = np.concatenate(pp_parts)
        gg = np.concatenate(gg_parts)
        if protocol == "matlab":
            w = np.minimum(a3[gg], r3[pp]) - np.maximum(a1[gg], r1[pp]) + 1
            h = np.minimum(a4[gg], r4[pp]) - np.maximum(a2[gg], r2[pp]) + 1
            inter = w * h
            aarea = (a3 - a1 + 1) * (a4 - a2 + 1)
            barea = ((b3 - b1) + 1) * ((b4 - b2) + 1)
            union = _to_int32(aarea[gg].astype(np.float64) + barea[pp])
            o = _int_divide(inter, _sat(union - inter))
        else:
            iw = np.minimum(a3[gg], b3[pp]) - np.maximum(a1[gg], b1[pp]) + 1
            ih = np.minimum(a4[gg], b4[pp]) - np.maximum(a2[gg], b2[pp]) + 1
            inter = iw * ih
            union = ((a3 - a1 + 1) * (a4 - a2 + 1))[gg] + ((b3 - b1 + 1) * (b4 - b2 + 1))[pp] - inter
            o = np.zeros(inter.shape)
            np.divide(inter, union, out=o, where=union != 0)
        hit = o >= iou_threshold
        pp, gg, o = pp[hit], gg[hit], o[hit]
        order = np.lexsort((gg, -o, pp))  # per prediction: largest overlap, then lowest face index
        pp, gg = pp[order], gg[order]
        first = np.ones(pp.size, dtype=bool)
        first[1:] = pp[1:] != pp[:-1]
        out[pp[first]] = gg[first]
    return [np.where(out[p_off[k]:p_off[k + 1]] >= 0, out[p_off[k]:p_off[k + 1]] - g_off[k], -1)
            for k in range(n_img)]


def overlap_continuous(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """Real-valued IoU ``[P, G]`` with the +1 pixel convention (the Python port's ``bbox_overlaps``)."""
    g = np.asarray(gt_xywh, dtype=np.float64)
    p = np.asarray(pred_xywh, dtype=np.float64)
    a1, a2, a3, a4 = g[:, 0], g[:, 1], g[:, 0] + g[:, 2], g[:, 1] + g[:, 3]
    b1, b2, b3, b4 = p[:, 0], p[:, 1], p[:, 0] + p[:, 2], p[:, 1] + p[:, 3]
    iw = np.minimum(a3[None, :], b3[:, None]) - np.maximum(a1[None, :], b1[:, None]) + 1
    ih = np.minimum(a4[None, :], b4[:, None]) - np.maximum(a2[None, :], b2[:, None]) + 1
    inter = iw * ih
    union = ((a3 - a1 + 1) * (a4 - a2 + 1))[None, :] + ((b3 - b1 + 1) * (b4 - b2 + 1))[:, None] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=(iw > 0) & (ih > 0) & (union != 0))
    return out


def normalise_scores(score_lists: Sequence[np.ndarray], protocol: str = "matlab") -> list[np.ndarray]:
    """``norm_score.m``: min-max normalisation over all predictions of the set (float64 out).

    ``matlab``: single-precision arithmetic with the realmin/realmax('single') seeds, as MATLAB
    evaluates it; ``continuous``: the same formula in double precision.
    """
    nonempty = [s for s in score_lists if s is not None and len(s)]
    if not nonempty:
        return [np.zeros(0) if s is None else np.asarray(s, np.float64) for s in score_lists]
    allv = np.concatenate(nonempty)
    if protocol == "matlab":
        hi = max(_REALMIN_SINGLE, np.float32(allv.max()))
        lo = min(_REALMAX_SINGLE, np.float32(allv.min()))
        span = np.float32(hi - lo)
        dtype = np.float32
    else:
        hi, lo = max(float(np.finfo(np.float32).tiny), float(allv.max())), min(float(np.finfo(np.float32).max), float(allv.min()))
        span = hi - lo
        dtype = np.float64
    out = []
    degenerate = span == 0
    if degenerate:
        warnings.warn("all prediction scores are equal: the official script would divide 0 by 0 and count "
                      "no prediction (AP 0); every normalised score is set to 1 instead", RuntimeWarning)
    for s in score_lists:
        if s is None or len(s) == 0:
            out.append(np.zeros(0))
            continue
        if degenerate:
            out.append(np.ones(len(s)))
        else:
            v = (np.asarray(s).astype(dtype) - dtype(lo)) / dtype(span)
            out.append(v.astype(np.float64))
    return out


def thresholds(num_thresholds: int = NUM_THRESHOLDS) -> np.ndarray:
    """``1 - t / N`` for t = 1..N, in double precision as MATLAB computes them (descending)."""
    return 1.0 - np.arange(1, num_thresholds + 1, dtype=np.float64) / float(num_thresholds)


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


def _align_predictions(predictions, gt: WiderFaceGT) -> list[np.ndarray]:
    if isinstance(predictions, Mapping):
        out: list[np.ndarray | None] = [None] * len(gt)
        for key, value in predictions.items():
            event, name = key
            try:
                out[gt.index(event, name)] = value
            except KeyError:
                raise KeyError(f"prediction for {event}/{name}, which is not in the ground truth") from None
        predictions = out
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} prediction entries for {len(gt)} ground-truth images")
    aligned = []
    for i, p in enumerate(predictions):
        if p is None:
            aligned.append(np.zeros((0, 5)))
            continue
        arr = np.asarray(p, dtype=np.float64)
        if arr.size == 0:
            aligned.append(np.zeros((0, 5)))
            continue
        if arr.ndim != 2 or arr.shape[1] < 5:
            raise ValueError(f"predictions for {gt.image_events[i]}/{gt.image_names[i]} must be [N, 5] "
                             f"(x, y, w, h, score), got {arr.shape}")
        if not np.isfinite(arr[:, :5]).all():
            raise ValueError(f"predictions for {gt.image_events[i]}/{gt.image_names[i]} are not finite")
        aligned.append(arr[:, :5])
    return aligned


def evaluate_widerface(
    predictions,
    gt: WiderFaceGT,
    settings: Sequence[str] | None = None,
    protocol: str = "matlab",
    iou_threshold: float = IOU_THRESHOLD,
    num_thresholds: int = NUM_THRESHOLDS,
    events: Iterable[str] | None = None,
) -> WiderFaceResult:
    """AP and PR curves of ``predictions`` on ``gt`` for each setting (see the module docstring).

    ``predictions``: a list aligned with ``gt`` (each ``[N, 5]`` ``x y w h score``, or None for
    no detection) as :func:`read_predictions` returns, or a mapping ``(event, image) -> [N, 5]``
    (absent images have no detection). ``events``: evaluate only these events (score
    normalisation and face counts then cover only them, as if the .mat held only them).
    """
    t0 = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    settings = tuple(settings) if settings is not None else gt.settings
    for s in settings:
        if s not in gt.keep:
            raise ValueError(f"setting {s!r} not loaded (have {gt.settings})")
    preds = _align_predictions(predictions, gt)
    if events is not None:
        events = set(events)
        unknown = events - set(gt.events)
        if unknown:
            raise KeyError(f"unknown WIDER FACE events: {sorted(unknown)}")
        sel = [i for i, e in enumerate(gt.image_events) if e in events]
    else:
        sel = list(range(len(gt)))

    # 1. sort each image by raw score (descending, stable), 2. normalise over the whole set.
    sorted_preds = []
    for i in sel:
        p = preds[i]
        sorted_preds.append(p[np.argsort(-p[:, 4], kind="stable")] if p.shape[0] > 1 else p)
    norm = normalise_scores([p[:, 4] for p in sorted_preds], protocol)

    # 3. per image matching (independent of the setting): global face id or -1. Images without
    #    a face box or without a prediction are skipped, as the official script does.
    face_offset = np.zeros(len(sel) + 1, dtype=np.int64)
    for k, i in enumerate(sel):
        face_offset[k + 1] = face_offset[k] + gt.boxes[i].shape[0]
    used = [k for k, i in enumerate(sel) if sorted_preds[k].shape[0] and gt.boxes[i].shape[0]]
    assigned = assign_faces([sorted_preds[k][:, :4] for k in used], [gt.boxes[sel[k]] for k in used],
                            protocol, iou_threshold)
    scores_parts = [norm[k] for k in used]
    face_parts = [np.where(a >= 0, face_offset[k] + a, -1) for k, a in zip(used, assigned)]
    scores = np.concatenate(scores_parts) if scores_parts else np.zeros(0)
    face = np.concatenate(face_parts) if face_parts else np.zeros(0, np.int64)
    matched = face >= 0
    ths = thresholds(num_thresholds)

    curves: dict[str, SettingCurve] = {}
    for setting in settings:
        keep = np.zeros(int(face_offset[-1]), dtype=bool)
        num_faces = 0
        for k, i in enumerate(sel):
            idx = gt.keep[setting][i]
            keep[face_offset[k] + idx] = True
            num_faces += idx.size
        kept = np.zeros_like(matched)
        kept[matched] = keep[face[matched]]
        proposal = ~(matched & ~kept)  # a prediction on an ignored face is not a proposal
        cand = np.flatnonzero(matched & kept)
        first = cand[first_occurrence(face[cand])]  # the prediction that recalls each face
        prop_scores = np.sort(scores[proposal])
        rec_scores = np.sort(scores[first])
        n_prop = prop_scores.shape[0] - np.searchsorted(prop_scores, ths, side="left")
        n_rec = rec_scores.shape[0] - np.searchsorted(rec_scores, ths, side="left")
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = n_rec / n_prop.astype(np.float64)
            recall = n_rec / float(num_faces) if num_faces else np.full(ths.shape, np.nan)
        ap = voc_ap(recall, precision) if num_faces else float("nan")
        curves[setting] = SettingCurve(ap, precision, recall, n_prop, n_rec, num_faces)
    n_pred = int(sum(p.shape[0] for p in sorted_preds))
    return WiderFaceResult(curves, ths, protocol, iou_threshold, len(sel), n_pred, time.perf_counter() - t0)


def evaluate_widerface_dir(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    allow_missing: bool = False,
    progress: bool = False,
    **kwargs,
) -> WiderFaceResult:
    """Read the ground truth and a submission folder, then :func:`evaluate_widerface`."""
    t0 = time.perf_counter()
    gt = load_widerface_gt(gt_dir)
    preds = read_predictions(pred_dir, gt, allow_missing=allow_missing, progress=progress)
    result = evaluate_widerface(preds, gt, **kwargs)
    result.seconds = time.perf_counter() - t0
    return result
