"""engines.json: the one definition of the TensorRT engine manifest (issue 11).

``export/build_engines.py`` writes it (EngineManifest.write) next to detector.plan and
keypoint_head.plan; ``maskface serve --target tensorrt`` reads it (EngineManifest.read) before it
renders the Triton repository and checks the serving parameters against it (check_serving), so the
two sides cannot disagree silently. The defaults both sides use are the constants below.

    manifest = EngineManifest.read("artifacts/engines")     # ManifestError names what is wrong
    manifest.check_serving(max_batch=4, max_side=640, max_detections=750, pre_nms_topk=3840, ...)
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import InferenceConfig
from ..io_utils import atomic_write_bytes

FILE_NAME = "engines.json"
FORMAT = 2
SIZE_MULTIPLE = 64
PRECISIONS = ("fp16", "fp32")
ENGINE_NAMES = ("detector", "keypoint_head")

# Defaults shared by the build (export/build_engines.py) and serving (maskface serve):
DEFAULT_MAX_BATCH = 4  # the detector's Triton dynamic batching (detector_max_batch_size)
DEFAULT_MAX_SIZE = 1024  # largest padded image side of the detector profile (serving resizes to 640)
# The keypoint engine gets one image's detections at a time: at most max_detections ROIs.
DEFAULT_MAX_FACES = InferenceConfig.max_detections
DEFAULT_PRE_NMS_TOPK = InferenceConfig.pre_nms_topk  # the detector's in-graph top-k (TensorRT: <= 3840)

BUILD_COMMAND = "export/build_engines.py"
SERVE_COMMAND = "maskface serve"


class ManifestError(ValueError):
    """engines.json is missing, malformed, or disagrees with what serving is asked to do."""


@dataclass(frozen=True)
class Profile:
    """One input's optimisation profile (min <= opt <= max, axis by axis)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "Profile":
        try:
            shapes = [tuple(int(v) for v in data[k]) for k in ("min", "opt", "max")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: a profile needs integer lists min / opt / max ({exc})") from None
        profile = cls(*shapes)
        if not len(profile.min) == len(profile.opt) == len(profile.max) or not all(
                0 <= a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max)):
            raise ManifestError(f"{where}: profile needs 0 <= min <= opt <= max on every axis, got {data}")
        return profile

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class EngineEntry:
    plan: str
    plan_sha256: str
    profile: dict[str, Profile]
    built_from: str = ""
    built_from_sha256: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # build log facts (layers, warnings, timings)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "EngineEntry":
        _require(data, ("plan", "plan_sha256", "profile"), where)
        known = {"plan", "plan_sha256", "profile", "built_from", "built_from_sha256"}
        return cls(plan=str(data["plan"]), plan_sha256=str(data["plan_sha256"]),
                   profile={k: Profile.from_json(v, f"{where}.profile.{k}") for k, v in data["profile"].items()},
                   built_from=str(data.get("built_from", "")), built_from_sha256=str(data.get("built_from_sha256", "")),
                   details={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "plan_sha256": self.plan_sha256,
                "profile": {k: p.to_json() for k, p in self.profile.items()},
                "built_from": self.built_from, "built_from_sha256": self.built_from_sha256, **self.details}


def _require(data: Mapping[str, Any], keys, where: str) -> None:
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ManifestError(f"{where}: missing {', '.join(missing)}")


@dataclass(frozen=True)
class EngineManifest:
    """What a build produced and the limits every request must stay within."""

    tensorrt_version: str
    precision: str  # fp16 | fp32
    max_batch: int
    max_size: int
    max_faces: int
    num_landmarks: int
    feature_channels: int
    pre_nms_topk: int
    engines: dict[str, EngineEntry]
    min_size: int = SIZE_MULTIPLE
    min_faces: int = 0
    plugin: dict[str, Any] | None = None  # path, sha256, creator
    details: dict[str, Any] = field(default_factory=dict)  # gpu, inputs, timings, host, ... (informational)
    format: int = FORMAT

    _CORE = ("tensorrt_version", "precision", "max_batch", "max_size", "max_faces", "num_landmarks",
             "feature_channels", "pre_nms_topk", "engines")

    def __post_init__(self):
        self.validate()

    @property
    def tensorrt_major(self) -> int:
        return int(self.tensorrt_version.split(".")[0])

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ManifestError(f"{FILE_NAME}: {message}")

        check(self.format == FORMAT, f"format {self.format}, this code reads format {FORMAT}: rebuild the engines "
              f"with {BUILD_COMMAND}")
        check(self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {PRECISIONS}")
        check(self.tensorrt_version.split(".")[0].isdigit(), f"tensorrt_version {self.tensorrt_version!r}")
        for name in ("max_batch", "max_faces", "num_landmarks", "feature_channels", "pre_nms_topk"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{name}={value!r} must be an integer >= 1")
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0 and value % SIZE_MULTIPLE == 0,
                  f"{name}={value!r} must be a positive multiple of {SIZE_MULTIPLE}")
        check(self.min_size <= self.max_size, f"min_size {self.min_size} > max_size {self.max_size}")
        check(0 <= self.min_faces <= self.max_faces, f"need 0 <= min_faces <= max_faces, got {self.min_faces}, "
              f"{self.max_faces}")
        unknown = set(self.engines) - set(ENGINE_NAMES)
        check(bool(self.engines) and not unknown, f"engines must be among {ENGINE_NAMES}, got {sorted(self.engines)}")
        det = self.engines.get("detector")
        if det is not None:
            images = det.profile.get("images")
            check(images is not None, "the detector engine has no 'images' profile")
            want = (self.max_batch, 3, self.max_size, self.max_size)
            check(images.max == want, f"detector profile max {images.max} disagrees with max_batch / max_size {want}")
        kp = self.engines.get("keypoint_head")
        if kp is not None:
            rois = kp.profile.get("rois")
            check(rois is not None, "the keypoint_head engine has no 'rois' profile")
            check(rois.max[0] == self.max_faces, f"keypoint_head rois profile max {rois.max} disagrees with "
                  f"max_faces {self.max_faces}")
            check(self.plugin is not None, "the keypoint_head engine needs the plugin library entry")

    # ------------------------------------------------------------------ json
    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EngineManifest":
        _require(data, cls._CORE, FILE_NAME)
        for key in ("max_batch", "max_size", "max_faces", "num_landmarks", "feature_channels", "pre_nms_topk",
                    "min_size", "min_faces", "format"):
            if key in data and not isinstance(data[key], int):
                raise ManifestError(f"{FILE_NAME}: {key}={data[key]!r} must be an integer")
        if not isinstance(data["engines"], Mapping):
            raise ManifestError(f"{FILE_NAME}: engines must be an object")
        fields_ = {f.name for f in dataclasses.fields(cls)} - {"engines", "details"}
        values = {k: data[k] for k in fields_ if k in data}
        values["engines"] = {n: EngineEntry.from_json(e, f"{FILE_NAME}: engines.{n}") for n, e in data["engines"].items()}
        values["details"] = dict(data.get("details", {}))
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("engines", "details")}
        out["engines"] = {n: e.to_json() for n, e in self.engines.items()}
        out["details"] = self.details
        return json.loads(json.dumps(out))

    @classmethod
    def read(cls, engines_dir: str | os.PathLike) -> "EngineManifest":
        path = Path(engines_dir) / FILE_NAME
        if not path.is_file():
            raise ManifestError(f"{path} not found: build the engines with {BUILD_COMMAND} --fp16")
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_json(data)

    def write(self, engines_dir: str | os.PathLike) -> Path:
        path = Path(engines_dir) / FILE_NAME
        atomic_write_bytes(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    # ------------------------------------------------------------------ serving contract
    def check_serving(self, *, max_batch: int, max_side: int, size_divisibility: int, max_detections: int,
                      pre_nms_topk: int | None = None, num_landmarks: int | None = None,
                      feature_channels: int | None = None) -> None:
        """Raise ManifestError naming the value to change, and on which command, when serving would
        send the engines something outside their profiles or expects other shapes."""
        problems = []
        if max_batch > self.max_batch:
            problems.append(f"detector_max_batch_size={max_batch} exceeds the detector engine's max batch "
                            f"{self.max_batch}: rebuild with `{BUILD_COMMAND} --max-batch {max_batch}` or serve with "
                            f"`{SERVE_COMMAND} --param detector_max_batch_size={self.max_batch}`")
        if max_side == 0:
            problems.append(f"max_side=0 (no resize) cannot serve the detector engine, whose profile stops at "
                            f"{self.max_size} px: serve with `{SERVE_COMMAND} --max-side {self.max_size}` or less")
        else:
            padded = -(-max_side // size_divisibility) * size_divisibility
            if padded > self.max_size:
                problems.append(f"max_side={max_side} pads to {padded} px, beyond the detector engine's profile "
                                f"({self.max_size} px): rebuild with `{BUILD_COMMAND} --max-size {padded}` or serve "
                                f"with `{SERVE_COMMAND} --max-side {self.max_size}`")
        if "keypoint_head" in self.engines and max_detections > self.max_faces:
            problems.append(f"max_detections={max_detections} exceeds the keypoint engine's max ROIs {self.max_faces}: "
                            f"rebuild with `{BUILD_COMMAND} --max-faces {max_detections}` or serve with "
                            f"`{SERVE_COMMAND} --max-detections {self.max_faces}`")
        for name, value, flag in (("pre_nms_topk", pre_nms_topk, "--param pre_nms_topk"),
                                  ("num_landmarks", num_landmarks, "--num-landmarks"),
                                  ("feature_channels", feature_channels, "--param feature_channels")):
            built = getattr(self, name)
            if value is not None and value != built:
                problems.append(f"{name}={value} was asked for but the engines were built with {built}: serve "
                                f"with `{SERVE_COMMAND} {flag}={built}` (or drop it), or export and rebuild the "
                                f"engines from a model with {name}={value}")
        if problems:
            raise ManifestError("the engines in engines.json do not fit the serving parameters:\n  - "
                                + "\n  - ".join(problems))
