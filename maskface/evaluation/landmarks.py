"""Landmark accuracy: NME, cumulative error distribution (CED), AUC, failure rate, CED@0.95.

Definitions used throughout (errors are per ground-truth face):

- NME of a face = mean over its *valid* landmarks of ``||pred - gt||_2 / d``. A landmark is
  invalid when the validity mask says so or when its ground truth is ``(-1, -1)`` or not finite
  (the "missing" convention of the annotation files); invalid points are left out of the mean.
- ``d`` = ``"box"``: ``sqrt(w * h)`` of the ground-truth face box (AFLW); ``"interocular"``:
  distance between the outer eye corners, points 36 and 45 of the 68-point set (300W). For the
  5- and 19-point sets the inter-ocular distance is taken between the centres of the left- and
  right-eye point groups (``LEFT_EYE`` / ``RIGHT_EYE`` of ``maskface.data.landmark_sets``).
  A face whose normaliser cannot be computed (missing eye points, zero-size box) or that has no
  valid landmark is *unscorable*: it is reported in ``num_unscorable`` and left out of every
  statistic.
- Detection-based evaluation (the paper, §4.3): each ground-truth face takes the most confident
  predicted face among those with IoU >= ``iou_threshold`` (0.3 or 0.4) with it, independently
  of the other faces. A face with no such prediction is *unmatched*: its error is ``inf``, so it
  counts as a failure, lowers the CED curve and AUC, and can make CED@0.95 infinite; it is left
  out of the mean/median NME (reported over matched faces, with ``num_matched``).
- CED(x) = fraction of faces with NME <= x. AUC@T = area under CED on [0, T] divided by T,
  computed exactly as ``mean(clip(1 - e / T, 0, 1))``. Failure rate@T = fraction with NME > T.
  CED@0.95 = the smallest x with CED(x) >= 0.95, i.e. the NME below which 95 % of faces fall.

File format for ground truth and predictions (``.json`` or ``.npz``; see :func:`load_landmark_file`)::

    JSON: {"num_landmarks": K,
           "images": [{"image": "<id>",
                       "faces": [{"box": [x1, y1, x2, y2], "landmarks": [[x, y] * K],
                                  "score": s,            # predictions (required there)
                                  "valid": [0/1] * K}]   # optional; (-1, -1) also marks missing
                      }, ...]}
    NPZ:  image_ids [F] str, boxes [F, 4], landmarks [F, K, 2], scores [F] (predictions),
          valid [F, K] (optional), images [I] str (optional: also lists images without faces)

Coordinates are image pixels, boxes xyxy. Images are joined on the ``image`` id.

Predictions may also be what ``maskface detect --json`` (or ``Detections.to_json()``) writes: one
``{"image": ..., "faces": [{"box", "score", "landmarks", ...}]}`` object per file, given as that
file or as a folder of them. Its ``image`` is the file name without extension; when such an id is
not in the ground truth, it is joined to the ground-truth image with that file stem (if exactly
one has it).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from maskface.data.landmark_sets import LEFT_EYE, OUTER_EYE_CORNERS_68, RIGHT_EYE
from maskface.evaluation.ap import as_boxes, box_iou
from maskface.io_utils import atomic_write

NORMALISERS = ("box", "interocular")


# --------------------------------------------------------------------------------------------
# Per-face errors and summary statistics
# --------------------------------------------------------------------------------------------


def landmark_validity(gt_landmarks: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Bool ``[..., K]``: a point counts when the mask allows it and its GT is not (-1, -1)/NaN."""
    gt = np.asarray(gt_landmarks, dtype=np.float64)
    ok = np.isfinite(gt).all(axis=-1) & ~(gt == -1).all(axis=-1)
    if valid is not None:
        v = np.asarray(valid).astype(bool)
        if v.shape != ok.shape:
            raise ValueError(f"valid mask has shape {v.shape}, landmarks need {ok.shape}")
        ok &= v
    return ok


def box_normaliser(gt_boxes_xyxy) -> np.ndarray:
    """``sqrt(w * h)`` of xyxy boxes ``[N, 4]`` (NaN for boxes without positive area)."""
    b = as_boxes(gt_boxes_xyxy)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    out = np.full(b.shape[0], np.nan)
    np.sqrt(area, out=out, where=area > 0)
    return out


def interocular_normaliser(gt_landmarks, valid: np.ndarray | None = None) -> np.ndarray:
    """Inter-ocular distance per face of ``[N, K, 2]`` landmarks (NaN when an eye is missing).

    K = 68: outer eye corners 36 and 45 (300W). K = 5 / 19: distance between the centres of the
    left-eye and right-eye point groups (``LEFT_EYE`` / ``RIGHT_EYE``).
    """
    gt = np.asarray(gt_landmarks, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[-1] != 2:
        raise ValueError(f"landmarks must be [N, K, 2], got {gt.shape}")
    k = gt.shape[1]
    ok = landmark_validity(gt, valid)
    if k == 68:
        left, right = (OUTER_EYE_CORNERS_68[0],), (OUTER_EYE_CORNERS_68[1],)
    elif k in LEFT_EYE:
        left, right = LEFT_EYE[k], RIGHT_EYE[k]
    else:
        raise ValueError(f"no inter-ocular definition for {k} landmarks (known: 68, {sorted(LEFT_EYE)})")
    left, right = list(left), list(right)
    usable = ok[:, left].all(axis=1) & ok[:, right].all(axis=1)
    dist = np.linalg.norm(gt[:, left].mean(axis=1) - gt[:, right].mean(axis=1), axis=-1)
    return np.where(usable & (dist > 0), dist, np.nan)


def nme_per_face(pred_landmarks, gt_landmarks, normaliser, valid: np.ndarray | None = None) -> np.ndarray:
    """NME ``[N]`` of ``[N, K, 2]`` predictions vs ground truth with per-face normaliser ``[N]``.

    NaN for faces without a valid point or without a finite positive normaliser.
    """
    pred = np.asarray(pred_landmarks, dtype=np.float64)
    gt = np.asarray(gt_landmarks, dtype=np.float64)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[-1] != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be [N, K, 2]")
    d = np.asarray(normaliser, dtype=np.float64).ravel()
    if d.shape[0] != gt.shape[0]:
        raise ValueError(f"{d.shape[0]} normalisers for {gt.shape[0]} faces")
    ok = landmark_validity(gt, valid)
    dist = np.linalg.norm(np.where(ok[..., None], pred - gt, 0.0), axis=-1)
    n = ok.sum(axis=1)
    out = np.full(gt.shape[0], np.nan)
    good = (n > 0) & np.isfinite(d) & (d > 0)
    out[good] = dist[good].sum(axis=1) / n[good] / d[good]
    return out


def _finite_errors(errors) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).ravel()
    if np.isnan(e).any():
        raise ValueError("errors contain NaN (drop unscorable faces first; unmatched faces are inf)")
    if (e < 0).any():
        raise ValueError("errors must be >= 0")
    return e


def ced_curve(errors, max_error: float = 0.1, num: int = 1001, thresholds=None) -> tuple[np.ndarray, np.ndarray]:
    """(x, CED(x)): fraction of faces with error <= x on ``linspace(0, max_error, num)`` or on the
    given ``thresholds``. ``inf`` errors (unmatched faces) stay in the denominator."""
    e = np.sort(_finite_errors(errors))
    x = np.linspace(0.0, max_error, num) if thresholds is None else np.asarray(thresholds, np.float64)
    if e.size == 0:
        return x, np.full(x.shape, np.nan)
    return x, np.searchsorted(e, x, side="right") / e.size


def auc_at(errors, threshold: float) -> float:
    """Area under the CED curve on [0, threshold], divided by threshold (exact)."""
    e = _finite_errors(errors)
    if e.size == 0:
        return float("nan")
    return float(np.mean(np.clip(1.0 - e / threshold, 0.0, 1.0)))


def failure_rate(errors, threshold: float) -> float:
    """Fraction of faces with error > threshold (unmatched faces included, as failures)."""
    e = _finite_errors(errors)
    return float(np.mean(e > threshold)) if e.size else float("nan")


def ced_at(errors, fraction: float = 0.95) -> float:
    """Smallest x with CED(x) >= fraction: the error below which ``fraction`` of faces fall."""
    e = np.sort(_finite_errors(errors))
    if e.size == 0:
        return float("nan")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * e.size - 1e-9))
    return float(e[k - 1])


# --------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------


@dataclass
class LandmarkImage:
    image: str
    boxes: np.ndarray  # [F, 4] xyxy
    landmarks: np.ndarray  # [F, K, 2]
    scores: np.ndarray | None = None  # [F]
    valid: np.ndarray | None = None  # [F, K] bool


@dataclass
class LandmarkFile:
    num_landmarks: int
    images: list[LandmarkImage] = field(default_factory=list)

    def by_id(self) -> dict[str, LandmarkImage]:
        out: dict[str, LandmarkImage] = {}
        for im in self.images:
            if im.image in out:
                raise ValueError(f"image {im.image!r} listed twice")
            out[im.image] = im
        return out

    @property
    def num_faces(self) -> int:
        return int(sum(im.boxes.shape[0] for im in self.images))


def _image_from_faces(image: str, faces: list, k: int | None, where: str) -> tuple[LandmarkImage, int | None]:
    boxes, lms, scores, valids = [], [], [], []
    has_score = has_valid = None
    for n, face in enumerate(faces):
        ctx = f"{where}: image {image!r} face {n}"
        try:
            box = np.asarray(face["box"], dtype=np.float64).reshape(4)
            lm = np.asarray(face["landmarks"], dtype=np.float64)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{ctx}: needs 'box' [x1, y1, x2, y2] and 'landmarks' [[x, y], ...] ({exc})") from None
        if lm.ndim != 2 or lm.shape[1] != 2:
            raise ValueError(f"{ctx}: landmarks must be [K, 2], got {lm.shape}")
        if k is None:
            k = lm.shape[0]
        if lm.shape[0] != k:
            raise ValueError(f"{ctx}: {lm.shape[0]} landmarks, file declares {k}")
        if has_score is None:
            has_score, has_valid = "score" in face, "valid" in face
        if ("score" in face) != has_score or ("valid" in face) != has_valid:
            raise ValueError(f"{ctx}: 'score'/'valid' must be given for every face or for none")
        boxes.append(box)
        lms.append(lm)
        if has_score:
            scores.append(float(face["score"]))
        if has_valid:
            v = np.asarray(face["valid"]).astype(bool).ravel()
            if v.shape[0] != k:
                raise ValueError(f"{ctx}: 'valid' has {v.shape[0]} entries for {k} landmarks")
            valids.append(v)
    kk = k or 0
    im = LandmarkImage(
        image=image,
        boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        landmarks=np.array(lms, dtype=np.float64).reshape(-1, kk, 2) if lms else np.zeros((0, kk, 2)),
        scores=np.array(scores, dtype=np.float64) if has_score else None,
        valid=(np.array(valids, dtype=bool).reshape(-1, kk) if valids else np.zeros((0, kk), bool)) if has_valid else None,
    )
    return im, k


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _is_detect_output(data) -> bool:
    return isinstance(data, dict) and "faces" in data and "images" not in data


def load_detect_outputs(path: str | os.PathLike) -> LandmarkFile:
    """Predictions written by ``maskface detect --json``: one such file, or a folder of them
    (every ``*.json`` directly inside it)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .json files in {path} (expected the output folder of `maskface detect --json`)")
    images, k = [], None
    for f in files:
        data = _read_json(f)
        if not _is_detect_output(data):
            raise ValueError(f"{f}: not a `maskface detect --json` file (needs 'image' and 'faces')")
        faces = data["faces"]
        for face in faces:
            if "score" not in face:
                raise ValueError(f"{f}: a face without 'score'")
        im, k = _image_from_faces(str(data.get("image", f.stem)), faces, k, str(f))
        images.append(im)
    if k is None:
        raise ValueError(f"{path}: no face in any file, so the number of landmarks is unknown")
    for im in images:
        im.landmarks = im.landmarks.reshape(-1, k, 2)
    return LandmarkFile(int(k), images)


def join_by_stem(gt: LandmarkFile, pred: LandmarkFile) -> LandmarkFile:
    """Prediction ids that are not ground-truth ids but equal exactly one ground-truth image's file
    stem (what ``detect --json`` writes) are renamed to that image's id."""
    gt_ids = {im.image for im in gt.images}
    stems: dict[str, list[str]] = {}
    for image in gt_ids:
        stems.setdefault(Path(image).stem, []).append(image)
    for im in pred.images:
        if im.image not in gt_ids and len(stems.get(im.image, ())) == 1:
            im.image = stems[im.image][0]
    return pred


def load_landmark_file(path: str | os.PathLike) -> LandmarkFile:
    """Read a ground-truth or prediction file (``.json`` or ``.npz``, format in the module doc),
    or ``maskface detect --json`` output (a file, or a folder of them)."""
    path = Path(path)
    if path.is_dir():
        return load_detect_outputs(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if _is_detect_output(data):
            return load_detect_outputs(path)
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"{path}: expected an object with 'images' (and 'num_landmarks')")
        k = data.get("num_landmarks")
        images = []
        for n, entry in enumerate(data["images"]):
            if "image" not in entry:
                raise ValueError(f"{path}: images[{n}] has no 'image' id")
            im, k = _image_from_faces(str(entry["image"]), entry.get("faces", []), k, str(path))
            images.append(im)
        if k is None:
            raise ValueError(f"{path}: cannot tell the number of landmarks (no face and no 'num_landmarks')")
        for im in images:  # images without faces were built before K was known
            if im.landmarks.shape[1] != k:
                im.landmarks = im.landmarks.reshape(-1, k, 2)
                if im.valid is not None:
                    im.valid = im.valid.reshape(-1, k)
        return LandmarkFile(int(k), images)
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = [key for key in ("image_ids", "boxes", "landmarks") if key not in z.files]
            if missing:
                raise ValueError(f"{path}: missing arrays {missing} (need image_ids, boxes, landmarks)")
            ids = z["image_ids"].astype(str)
            boxes = np.asarray(z["boxes"], np.float64).reshape(-1, 4)
            lms = np.asarray(z["landmarks"], np.float64)
            scores = np.asarray(z["scores"], np.float64).ravel() if "scores" in z.files else None
            valid = np.asarray(z["valid"]).astype(bool) if "valid" in z.files else None
            listed = z["images"].astype(str).tolist() if "images" in z.files else []
            k = int(z["num_landmarks"]) if "num_landmarks" in z.files else (lms.shape[1] if lms.ndim == 3 else None)
        f = ids.shape[0]
        if k is None or lms.shape != (f, k, 2) or boxes.shape[0] != f:
            raise ValueError(f"{path}: expected boxes [F, 4], landmarks [F, K, 2] for F = {f} image_ids; "
                             f"got boxes {boxes.shape}, landmarks {lms.shape}")
        if scores is not None and scores.shape[0] != f:
            raise ValueError(f"{path}: scores has {scores.shape[0]} entries for {f} faces")
        if valid is not None and valid.shape != (f, k):
            raise ValueError(f"{path}: valid must be [F, K] = {(f, k)}, got {valid.shape}")
        order: list[str] = []
        for name in listed + ids.tolist():
            if name not in order:
                order.append(name)
        groups: dict[str, list[int]] = {name: [] for name in order}
        for i, name in enumerate(ids.tolist()):
            groups[name].append(i)
        images = []
        for name in order:
            sel = np.array(groups[name], dtype=np.int64)
            images.append(LandmarkImage(name, boxes[sel], lms[sel].reshape(-1, k, 2),
                                        None if scores is None else scores[sel],
                                        None if valid is None else valid[sel].reshape(-1, k)))
        return LandmarkFile(k, images)
    raise ValueError(f"{path}: unknown landmark file type (use .json or .npz)")


def save_landmark_file(path: str | os.PathLike, data: LandmarkFile) -> Path:
    """Write ``data`` as ``.json`` or ``.npz`` (by suffix), atomically."""
    path = Path(path)
    k = data.num_landmarks
    if path.suffix.lower() == ".json":
        images = []
        for im in data.images:
            faces = []
            for i in range(im.boxes.shape[0]):
                face = {"box": im.boxes[i].tolist(), "landmarks": im.landmarks[i].tolist()}
                if im.scores is not None:
                    face["score"] = float(im.scores[i])
                if im.valid is not None:
                    face["valid"] = im.valid[i].astype(int).tolist()
                faces.append(face)
            images.append({"image": im.image, "faces": faces})
        text = json.dumps({"num_landmarks": k, "images": images})

        def write(f):
            f.write(text.encode())

    elif path.suffix.lower() == ".npz":
        ids = [im.image for im in data.images for _ in range(im.boxes.shape[0])]
        arrays = {
            "image_ids": np.array(ids, dtype=str),
            "images": np.array([im.image for im in data.images], dtype=str),
            "boxes": np.concatenate([im.boxes for im in data.images]).reshape(-1, 4) if data.images else np.zeros((0, 4)),
            "landmarks": (np.concatenate([im.landmarks for im in data.images]).reshape(-1, k, 2)
                          if data.images else np.zeros((0, k, 2))),
            "num_landmarks": np.array(k),
        }
        if data.images and all(im.scores is not None for im in data.images):
            arrays["scores"] = np.concatenate([im.scores for im in data.images])
        if data.images and all(im.valid is not None for im in data.images):
            arrays["valid"] = np.concatenate([im.valid for im in data.images]).reshape(-1, k)

        def write(f):
            np.savez(f, **arrays)

    else:
        raise ValueError(f"{path}: use a .json or .npz file name")
    atomic_write(path, write)
    return path


# --------------------------------------------------------------------------------------------
# Detection-based evaluation
# --------------------------------------------------------------------------------------------


def match_faces(gt_boxes, pred_boxes, pred_scores, iou_threshold: float = 0.4) -> np.ndarray:
    """For each ground-truth face, the index of the most confident prediction with IoU >=
    ``iou_threshold`` (continuous IoU, xyxy), or -1. Faces choose independently (a prediction
    may in principle serve two faces); ties in score go to the earlier prediction."""
    g = as_boxes(gt_boxes, "gt_boxes")
    p = as_boxes(pred_boxes, "pred_boxes")
    s = np.asarray(pred_scores, dtype=np.float64).ravel()
    if s.shape[0] != p.shape[0]:
        raise ValueError(f"{p.shape[0]} boxes but {s.shape[0]} scores")
    out = np.full(g.shape[0], -1, dtype=np.int64)
    if g.shape[0] == 0 or p.shape[0] == 0:
        return out
    ok = box_iou(g, p) >= iou_threshold  # [G, P]
    cand = np.where(ok, s[None, :], -np.inf)
    best = cand.argmax(axis=1)
    has = ok.any(axis=1)
    out[has] = best[has]
    return out


@dataclass
class LandmarkResult:
    errors: np.ndarray  # [N] NME of every scorable face, inf when unmatched
    normaliser: str
    iou_threshold: float
    threshold: float
    num_faces: int  # ground-truth faces, scorable or not
    num_unscorable: int
    num_matched: int
    mean_nme: float  # over matched faces
    median_nme: float
    auc: float
    failure_rate: float
    ced95: float
    ced_max_error: float
    image_ids: list = field(default_factory=list, repr=False)  # [N] image of each error

    def curve(self, num: int = 1001):
        return ced_curve(self.errors, self.ced_max_error, num)

    def to_dict(self, with_errors: bool = False) -> dict:
        def f(x):
            return None if x is None or not np.isfinite(x) else float(x)

        out = {
            "normaliser": self.normaliser,
            "iou_threshold": self.iou_threshold,
            "threshold": self.threshold,
            "num_faces": self.num_faces,
            "num_unscorable": self.num_unscorable,
            "num_scored": int(self.errors.size),
            "num_matched": self.num_matched,
            "mean_nme": f(self.mean_nme),
            "median_nme": f(self.median_nme),
            f"auc@{self.threshold:g}": f(self.auc),
            f"failure_rate@{self.threshold:g}": f(self.failure_rate),
            "ced@0.95": f(self.ced95),
        }
        x, y = self.curve(101)
        out["ced_curve"] = {"nme": x.tolist(), "fraction": [f(v) for v in y]}
        if with_errors:
            out["errors"] = [f(v) for v in self.errors]
        return out

    def summary(self) -> str:
        return (f"faces {self.num_faces} (matched {self.num_matched}, unscorable {self.num_unscorable}), "
                f"normaliser {self.normaliser}: NME {self.mean_nme:.4f} (median {self.median_nme:.4f}), "
                f"AUC@{self.threshold:g} {self.auc:.4f}, failure@{self.threshold:g} {self.failure_rate:.4f}, "
                f"CED@0.95 {self.ced95:.4f}")


def summarise_errors(errors, threshold: float = 0.08) -> dict:
    """mean/median over finite errors, AUC, failure rate and CED@0.95 over all of them."""
    e = _finite_errors(errors)
    fin = e[np.isfinite(e)]
    return {
        "mean_nme": float(fin.mean()) if fin.size else float("nan"),
        "median_nme": float(np.median(fin)) if fin.size else float("nan"),
        "auc": auc_at(e, threshold),
        "failure_rate": failure_rate(e, threshold),
        "ced95": ced_at(e, 0.95),
    }


def evaluate_landmarks(
    gt: LandmarkFile,
    pred: LandmarkFile,
    normaliser: str = "box",
    iou_threshold: float = 0.4,
    threshold: float = 0.08,
    ced_max_error: float | None = None,
    strict_images: bool = False,
) -> LandmarkResult:
    """Match predictions to ground-truth faces by IoU and score their landmarks (module doc).

    Ground-truth images missing from ``pred`` have all their faces unmatched. Predictions for
    images that are not in the ground truth are ignored, or an error with ``strict_images``.
    """
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got {normaliser!r}")
    if gt.num_landmarks != pred.num_landmarks:
        raise ValueError(f"ground truth has {gt.num_landmarks} landmarks, predictions {pred.num_landmarks}")
    preds = pred.by_id()
    gts = gt.by_id()
    extra = sorted(set(preds) - set(gts))
    if extra and strict_images:
        raise ValueError(f"{len(extra)} predicted images are not in the ground truth, e.g. {extra[:5]}")
    errors, ids = [], []
    num_faces = num_unscorable = num_matched = 0
    for im in gt.images:
        n = im.boxes.shape[0]
        if n == 0:
            continue
        num_faces += n
        if normaliser == "box":
            d = box_normaliser(im.boxes)
        else:
            d = interocular_normaliser(im.landmarks, im.valid)
        ok = landmark_validity(im.landmarks, im.valid)
        scorable = np.isfinite(d) & (d > 0) & ok.any(axis=1)
        num_unscorable += int((~scorable).sum())
        e = np.full(n, np.inf)
        p = preds.get(im.image)
        if p is not None and p.boxes.shape[0]:
            if p.scores is None:
                raise ValueError(f"predictions for image {im.image!r} have no scores (needed to pick the "
                                 f"most confident face)")
            m = match_faces(im.boxes, p.boxes, p.scores, iou_threshold)
            hit = m >= 0
            if hit.any():
                e[hit] = nme_per_face(p.landmarks[m[hit]], im.landmarks[hit], d[hit],
                                      None if im.valid is None else im.valid[hit])
            num_matched += int((hit & scorable).sum())
        errors.append(e[scorable])
        ids += [im.image] * int(scorable.sum())
    errs = np.concatenate(errors) if errors else np.zeros(0)
    stats = summarise_errors(errs, threshold)
    return LandmarkResult(
        errors=errs, normaliser=normaliser, iou_threshold=iou_threshold, threshold=threshold,
        num_faces=num_faces, num_unscorable=num_unscorable, num_matched=num_matched,
        mean_nme=stats["mean_nme"], median_nme=stats["median_nme"], auc=stats["auc"],
        failure_rate=stats["failure_rate"], ced95=stats["ced95"],
        ced_max_error=float(ced_max_error if ced_max_error is not None else max(threshold * 1.5, 0.1)),
        image_ids=ids,
    )
