"""WIDER FACE validation ground truth: the official ``.mat`` files (``wider_face_val.mat`` and the
easy / medium / hard keep lists of ``eval_tools/ground_truth/``) or the ``wider_face_val_bbx_gt.txt``
text annotation (one "all" setting), read into :class:`WiderFaceGT`."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {
    "all": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}
GT_ENV_VAR = "MASKFACE_WIDER_GT"
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|bmp)$", re.IGNORECASE)


def strip_image_ext(name: str) -> str:
    """The image name as the ground truth and the submission files key it: no folder, no extension."""
    return _IMAGE_EXT.sub("", os.path.basename(str(name)))


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
        return self._index[(event, strip_image_ext(image_name))]

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
    from maskface.data.structures import DataReport
    from maskface.data.widerface import read_bbx_gt

    path = Path(path)
    report = DataReport(str(path))  # zero-size faces are dropped (they can never be matched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read_bbx_gt(path, path.parent, report)
    events: list[str] = []
    image_events, image_names, boxes, keep = [], [], [], []
    for rec in records:
        rel = Path(rec.image_path).relative_to(path.parent)
        event = rel.parent.as_posix()
        if event not in events:
            events.append(event)
        image_events.append(event)
        image_names.append(strip_image_ext(rel.name))
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
