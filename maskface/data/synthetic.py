"""Synthetic face datasets with exactly known boxes and landmarks, in the real on-disk layouts.

Each face is a cartoon drawn with cv2 inside its box: a skin-coloured ellipse filling the box,
arched brows, two dark eyes (white sclera, dark iris), a nose line with nostrils and a filled
mouth. The 68 landmarks are fixed points of that drawing (a left/right symmetric template in
coordinates relative to the box, see TEMPLATE_68), the 5 and 19 point sets are taken from them,
and the drawing uses the very same coordinates, so annotations are exact:

- boxes are integer (x, y, w, h), as in WIDER FACE;
- landmarks are rounded to multiples of 1/8 px (exact in float32 and in "%.3f" text, and cv2
  draws them exactly with 3 fractional bits).

Layouts written (all under `root`):
- write_widerface: wider_face_split/wider_face_{split}_bbx_gt.txt (with the official 0-face
  quirk), {split}/label.txt (RetinaFace: `# path`, x y w h + 5 x (x, y, 0.0) + score, -1 when a
  face's landmarks are withheld), WIDER_{split}/images/0--Synthetic/*.jpg
- write_aflw: face_landmarks_aflw_{split}.csv (HRNet columns), images/{split}/*.jpg
- write_300w: face_landmarks_300w_{split}.csv, images/{split}/*.jpg and a .pts per image next to it

And what the evaluators read, so that every `maskface evaluate` command runs on this data:
- widerface, val split: eval_tools/ground_truth/wider_{face,easy,medium,hard}_val.mat in the layout
  of the official evaluation code (every synthetic face is large and clear, so every face counts
  in every setting) for `evaluate widerface --gt ROOT/eval_tools/ground_truth`;
- every layout: a landmark ground-truth file for `evaluate landmarks --gt`:
  wider_face_split/wider_face_{split}_landmarks.json (5 points; ids relative to WIDER_{split}/images)
  and landmarks_{aflw,300w}_{split}.json (ids relative to ROOT, as `maskface predict-landmarks`).

Command line: python -m maskface.data.synthetic {widerface,aflw,300w} OUT [--num-images N ...]
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHIFT = 3  # cv2 fractional bits: coordinates are multiples of 1/8 px
_Q = float(1 << SHIFT)


def _template_68() -> np.ndarray:
    """68 points in box-relative units: (u, v) in [-1, 1]^2, u to the image right, v down."""
    pts = np.zeros((68, 2))
    for i in range(17):  # jaw, from the image-left ear through the chin
        t = math.pi - i * math.pi / 16
        pts[i] = (0.9 * math.cos(t), 0.9 * math.sin(t))
    for k in range(5):  # brows
        u = -0.62 + k * 0.11
        v = -0.44 - 0.07 * math.sin(math.pi * k / 4)
        pts[17 + k] = (u, v)
        pts[26 - k] = (-u, v)
    for k, v in enumerate((-0.22, -0.12, -0.02, 0.08)):  # nose bridge, 30 = tip
        pts[27 + k] = (0.0, v)
    for k, (u, v) in enumerate(((-0.14, 0.18), (-0.07, 0.2), (0.0, 0.21), (0.07, 0.2), (0.14, 0.18))):
        pts[31 + k] = (u, v)
    ew, eh, ey = 0.15, 0.07, -0.2
    for base, cx in ((36, -0.36), (42, 0.36)):  # eyes: corner, 2 top, corner, 2 bottom (clockwise)
        pts[base:base + 6] = [(cx - ew, ey), (cx - ew / 3, ey - eh), (cx + ew / 3, ey - eh),
                              (cx + ew, ey), (cx + ew / 3, ey + eh), (cx - ew / 3, ey + eh)]
    mw, mh, my = 0.36, 0.14, 0.5
    top = [(f * mw, my - mh * math.sqrt(1 - f * f)) for f in (-2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3)]
    bottom = [(f * mw, my + mh * math.sqrt(1 - f * f)) for f in (2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3)]
    pts[48:60] = [(-mw, my)] + top + [(mw, my)] + bottom
    pts[60:68] = [(-0.24, my), (-0.12, my - 0.04), (0.0, my - 0.045), (0.12, my - 0.04),
                  (0.24, my), (0.12, my + 0.04), (0.0, my + 0.045), (-0.12, my + 0.04)]
    return pts


TEMPLATE_68 = _template_68()


def _quantise(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _Q) / _Q


def face_landmarks_68(box) -> np.ndarray:
    """The 68 landmarks [68, 2] (multiples of 1/8 px) of the face drawn in `box` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    r = np.array([(x2 - x1) / 2, (y2 - y1) / 2])
    return _quantise(c + TEMPLATE_68 * r)


def landmarks_5(lm68: np.ndarray) -> np.ndarray:
    """Left eye centre, right eye centre, nose tip, left / right mouth corner."""
    eyes_l = _quantise(lm68[..., 36:42, :].mean(-2))
    eyes_r = _quantise(lm68[..., 42:48, :].mean(-2))
    return np.stack([eyes_l, eyes_r, lm68[..., 30, :], lm68[..., 48, :], lm68[..., 54, :]], -2)


def landmarks_19(lm68: np.ndarray) -> np.ndarray:
    """AFLW order: brows (3 + 3), eyes (corner, centre, corner) x 2, nose (3), mouth (3), chin."""
    eye_l = _quantise(lm68[..., 36:42, :].mean(-2))
    eye_r = _quantise(lm68[..., 42:48, :].mean(-2))
    mouth = _quantise((lm68[..., 51, :] + lm68[..., 57, :]) / 2)
    g = lambda i: lm68[..., i, :]  # noqa: E731
    return np.stack([g(17), g(19), g(21), g(22), g(24), g(26), g(36), eye_l, g(39), g(42), eye_r, g(45),
                     g(31), g(30), g(35), g(48), mouth, g(54), g(8)], -2)


def _fx(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _Q).astype(np.int32)


def draw_face(image: np.ndarray, box, rng: np.random.Generator) -> np.ndarray:
    """Draw a cartoon face filling `box` on a uint8 BGR image; returns its 68 landmarks."""
    lm = face_landmarks_68(box)
    x1, y1, x2, y2 = (float(v) for v in box)
    c = ((x1 + x2) / 2, (y1 + y2) / 2)
    rx, ry = (x2 - x1) / 2, (y2 - y1) / 2
    aa = cv2.LINE_AA
    skin = tuple(int(v) for v in rng.integers([120, 150, 190], [190, 215, 255]))
    dark = tuple(int(v) for v in rng.integers(10, 60, size=3))
    cv2.ellipse(image, tuple(_fx(c)), tuple(_fx((rx, ry))), 0, 0, 360, skin, -1, aa, SHIFT)
    cv2.ellipse(image, tuple(_fx(c)), tuple(_fx((rx, ry))), 0, 0, 360, dark, max(1, round(rx / 20)), aa, SHIFT)
    t = max(1, round(ry / 25))
    for idx in (range(17, 22), range(22, 27)):  # brows
        cv2.polylines(image, [_fx(lm[list(idx)])], False, dark, t, aa, SHIFT)
    for base in (36, 42):  # eyes
        eye = lm[base:base + 6]
        cv2.fillPoly(image, [_fx(eye)], (245, 245, 245), aa, SHIFT)
        centre = eye.mean(0)
        cv2.circle(image, tuple(_fx(centre)), int(round(0.065 * ry * _Q)), (25, 20, 15), -1, aa, SHIFT)
    cv2.polylines(image, [_fx(lm[27:31])], False, dark, t, aa, SHIFT)  # nose
    cv2.polylines(image, [_fx(lm[31:36])], False, dark, t, aa, SHIFT)
    cv2.fillPoly(image, [_fx(lm[48:60])], (50, 40, 150), aa, SHIFT)  # mouth
    cv2.fillPoly(image, [_fx(lm[60:68])], (30, 20, 70), aa, SHIFT)
    return lm


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth low-saturation colour field + noise + a few non-face shapes (distractors)."""
    small = rng.integers(40, 200, size=(4, 4, 1)).astype(np.float32) + rng.integers(-15, 15, size=(4, 4, 3))
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 8, size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        p = rng.integers(0, [width, height])
        s = rng.integers(4, max(5, min(width, height) // 5), size=2)
        if rng.random() < 0.5:
            cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in p + s), color, -1)
        else:
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in p + s * [1, -1]), color, 2)
    return img


def _place_boxes(rng, width, height, count, face_size, aspect, margin=2, tries=200) -> list[np.ndarray]:
    """Integer, non-overlapping boxes inside the image; `aspect` = width / height."""
    boxes: list[np.ndarray] = []
    for _ in range(count):
        for _ in range(tries):
            h = int(rng.integers(face_size[0], face_size[1] + 1))
            h -= h % 2
            w = int(round(h * aspect))
            w -= w % 2
            if w + 2 * margin > width or h + 2 * margin > height:
                continue
            x = int(rng.integers(margin, width - w - margin + 1))
            y = int(rng.integers(margin, height - h - margin + 1))
            b = np.array([x, y, x + w, y + h], np.float64)
            if all(b[0] >= o[2] + margin or o[0] >= b[2] + margin or b[1] >= o[3] + margin or o[1] >= b[3] + margin
                   for o in boxes):
                boxes.append(b)
                break
    return boxes


@dataclass
class SyntheticImage:
    name: str  # path relative to the images folder
    path: Path
    boxes: np.ndarray  # float32 [G, 4] x1 y1 x2 y2
    landmarks: np.ndarray  # float32 [G, K, 2]
    landmark_valid: np.ndarray  # bool [G, K]
    landmarks68: np.ndarray  # float32 [G, 68, 2] (all the points drawn)


def synth_image(rng: np.random.Generator, width: int, height: int, num_faces: int,
                face_size: tuple[int, int], aspect: float = 0.8):
    """(image uint8 BGR, boxes [G, 4], landmarks68 [G, 68, 2]) with non-overlapping faces."""
    image = background(rng, width, height)
    boxes = _place_boxes(rng, width, height, num_faces, face_size, aspect)
    lms = [draw_face(image, b, rng) for b in boxes]
    return (image, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(lms, np.float32).reshape(-1, 68, 2))


def _write_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {path}")


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def write_widerface(root: str | Path, splits=("train", "val"), num_images: int = 8,
                    image_size: tuple[int, int] = (256, 256), faces_per_image: tuple[int, int] = (1, 3),
                    face_size: tuple[int, int] = (48, 128), seed: int = 0, empty_images: int = 1,
                    landmark_drop_prob: float = 0.0) -> dict[str, list[SyntheticImage]]:
    """WIDER FACE layout (both annotation formats). `empty_images` of the images have no face;
    a face's landmarks are withheld (-1 in label.txt) with probability `landmark_drop_prob`."""
    root = Path(root)
    out: dict[str, list[SyntheticImage]] = {}
    for si, split in enumerate(splits):
        rng = np.random.default_rng([seed, si])
        images_dir = root / f"WIDER_{split}" / "images"
        items = []
        gt_lines, label_lines = [], []
        for i in range(num_images):
            n = 0 if i < empty_images else int(rng.integers(faces_per_image[0], faces_per_image[1] + 1))
            image, boxes, lm68 = synth_image(rng, image_size[0], image_size[1], n, face_size)
            name = f"0--Synthetic/0_Synthetic_{split}_{i:04d}.jpg"
            _write_jpg(images_dir / name, image)
            lm5 = landmarks_5(lm68).astype(np.float32)
            valid = np.ones(lm5.shape[:2], bool)
            if landmark_drop_prob > 0 and len(boxes):
                valid &= (rng.random(len(boxes)) >= landmark_drop_prob)[:, None]
            lm5_out = np.where(valid[..., None], lm5, 0.0).astype(np.float32)
            items.append(SyntheticImage(name, images_dir / name, boxes, lm5_out, valid, lm68))
            gt_lines += [name, str(len(boxes))]
            if len(boxes) == 0:
                gt_lines.append("0 0 0 0 0 0 0 0 0 0 ")
            label_lines.append(f"# {name}")
            for b, p, v in zip(boxes, lm5, valid):
                x, y, w, h = int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])
                gt_lines.append(f"{x} {y} {w} {h} 0 0 0 0 0 0 ")
                if v.all():
                    pts = " ".join(f"{_fmt(px)} {_fmt(py)} 0.0" for px, py in p)
                    label_lines.append(f"{x} {y} {w} {h} {pts} 0.9")
                else:
                    label_lines.append(f"{x} {y} {w} {h} " + " ".join(["-1.0"] * 16))
        (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(gt_lines) + "\n")
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "label.txt").write_text("\n".join(label_lines) + "\n")
        _write_landmark_gt(root / "wider_face_split" / f"wider_face_{split}_landmarks.json", items, 5, images_dir)
        if split == "val":
            write_widerface_mat_gt(root / "eval_tools" / "ground_truth", items)
        out[split] = items
    return out


def _write_landmark_gt(path: Path, items: list["SyntheticImage"], k: int, id_root: Path) -> Path:
    """The ground truth `maskface evaluate landmarks --gt` reads (maskface.evaluation.landmarks)."""
    from maskface.evaluation.landmarks import LandmarkFile, LandmarkImage, save_landmark_file

    images = [LandmarkImage(Path(it.path).relative_to(id_root).as_posix(), np.asarray(it.boxes, np.float64).reshape(-1, 4),
                            np.asarray(it.landmarks, np.float64).reshape(-1, k, 2), None,
                            np.asarray(it.landmark_valid, bool).reshape(-1, k)) for it in items]
    return save_landmark_file(path, LandmarkFile(k, images))


def write_widerface_mat_gt(folder: Path, items: list["SyntheticImage"]) -> Path:
    """wider_face_val.mat and wider_{easy,medium,hard}_val.mat as the official evaluation code ships
    them (cell arrays event_list / file_list / face_bbx_list, int32 x y w h, 1-based gt_list); every
    face is kept in every setting."""
    from scipy.io import savemat

    events: dict[str, list["SyntheticImage"]] = {}
    for it in items:
        events.setdefault(Path(it.name).parent.name, []).append(it)

    def cells(values) -> np.ndarray:
        arr = np.empty((len(values), 1), dtype=object)
        for i, v in enumerate(values):
            arr[i, 0] = v
        return arr

    event_list = cells(list(events))
    file_list = cells([cells([Path(it.name).stem for it in its]) for its in events.values()])
    bbx = []
    for its in events.values():
        per_image = []
        for it in its:
            b = np.asarray(it.boxes, np.float64).reshape(-1, 4)
            per_image.append(np.column_stack([b[:, :2], b[:, 2:] - b[:, :2]]).round().astype(np.int32))
        bbx.append(cells(per_image))
    face_bbx_list = cells(bbx)
    folder.mkdir(parents=True, exist_ok=True)
    savemat(str(folder / "wider_face_val.mat"),
            {"event_list": event_list, "file_list": file_list, "face_bbx_list": face_bbx_list})
    gt_list = cells([cells([np.arange(1, len(it.boxes) + 1, dtype=np.float64).reshape(-1, 1) for it in its])
                     for its in events.values()])
    for setting in ("easy", "medium", "hard"):
        savemat(str(folder / f"wider_{setting}_val.mat"), {"event_list": event_list, "file_list": file_list,
                                                          "face_bbx_list": face_bbx_list, "gt_list": gt_list})
    return folder


def _write_landmark_set(root: Path, kind: str, splits, num_images, image_size, faces_per_image, face_size,
                        seed) -> dict[str, list[SyntheticImage]]:
    out: dict[str, list[SyntheticImage]] = {}
    k = 19 if kind == "aflw" else 68
    for si, split in enumerate(splits):
        rng = np.random.default_rng([seed, 100 + si, k])
        rows, items = [], []
        for i in range(num_images):
            n = int(rng.integers(faces_per_image[0], faces_per_image[1] + 1))
            image, boxes, lm68 = synth_image(rng, image_size[0], image_size[1], n, face_size, aspect=1.0)
            name = f"{split}/{kind}_{i:04d}.jpg"
            path = root / "images" / name
            _write_jpg(path, image)
            lm = (landmarks_19(lm68) if k == 19 else lm68).astype(np.float32)
            items.append(SyntheticImage(name, path, boxes, lm, np.ones(lm.shape[:2], bool), lm68))
            for b, p in zip(boxes, lm):
                side = float(b[2] - b[0])
                cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
                head = [side / 200.0, side, cx, cy] if k == 19 else [side / 200.0, cx, cy]
                rows.append([name] + [repr(float(v)) for v in head] + [repr(float(v)) for v in p.reshape(-1)])
            if k == 68 and len(boxes) == 1:
                pts_text = "version: 1\nn_points:  68\n{\n" + "".join(
                    f"{_fmt(x)} {_fmt(y)}\n" for x, y in lm[0]) + "}\n"
                path.with_suffix(".pts").write_text(pts_text)
        _write_landmark_gt(root / f"landmarks_{kind}_{split}.json", items, k, root)
        fields = ["scale", "box_size", "center_w", "center_h"] if k == 19 else ["scale", "center_w", "center_h"]
        header = ["image_name"] + fields + [f"original_{j}_{a}" for j in range(k) for a in "xy"]
        with open(root / f"face_landmarks_{kind}_{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        out[split] = items
    return out


def write_aflw(root: str | Path, splits=("train", "test"), num_images: int = 6,
               image_size: tuple[int, int] = (256, 256), faces_per_image: tuple[int, int] = (1, 1),
               face_size: tuple[int, int] = (80, 160), seed: int = 0) -> dict[str, list[SyntheticImage]]:
    """AFLW (19 points) in the HRNet layout; faces have square boxes (box_size = side)."""
    return _write_landmark_set(Path(root), "aflw", splits, num_images, image_size, faces_per_image, face_size, seed)


def write_300w(root: str | Path, splits=("train", "test"), num_images: int = 6,
               image_size: tuple[int, int] = (256, 256), faces_per_image: tuple[int, int] = (1, 1),
               face_size: tuple[int, int] = (80, 160), seed: int = 0) -> dict[str, list[SyntheticImage]]:
    """300W (68 points): HRNet CSV + a .pts next to each single-face image."""
    return _write_landmark_set(Path(root), "300w", splits, num_images, image_size, faces_per_image, face_size, seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maskface.data.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=("widerface", "aflw", "300w"))
    p.add_argument("out", type=Path)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"))
    p.add_argument("--face-size", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    kw = dict(num_images=a.num_images, image_size=tuple(a.size), seed=a.seed)
    if a.face_size:
        kw["face_size"] = tuple(a.face_size)
    writer = {"widerface": write_widerface, "aflw": write_aflw, "300w": write_300w}[a.kind]
    result = writer(a.out, **kw)
    for split, items in result.items():
        print(f"{a.kind} {split}: {len(items)} images, {sum(len(i.boxes) for i in items)} faces -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
