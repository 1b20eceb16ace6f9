"""Readers: a generated dataset reads back exactly; malformed input fails with file:line."""
import shutil
import warnings

import numpy as np
import pytest
import torch

from maskface.config import InputConfig
from maskface.data.aflw import AFLWDataset
from maskface.data.dataset import collate
from maskface.data.registry import build_dataset
from maskface.data.structures import AnnotationFormatError, DatasetError, DataWarning, ImageReadError
from maskface.data.w300 import W300Dataset, read_pts
from maskface.data.widerface import WiderFaceDataset, read_bbx_gt, read_retinaface_labels


def _assert_same(records, written, with_landmarks=True):
    assert [r.image_path for r in records] == [w.path for w in written]
    for rec, w in zip(records, written):
        np.testing.assert_array_equal(rec.boxes, w.boxes)
        if with_landmarks:
            np.testing.assert_array_equal(rec.landmark_valid, w.landmark_valid)
            np.testing.assert_array_equal(rec.landmarks[rec.landmark_valid], w.landmarks[w.landmark_valid])
        else:
            assert not rec.landmark_valid.any() and rec.landmarks.shape[1] == 5


@pytest.mark.parametrize("split", ["train", "val"])
def test_widerface_both_formats_read_back_exactly(widerface_root, split):
    root, written = widerface_root
    items = written[split]
    assert len(items[0].boxes) == 0  # the 0-face quirk is exercised
    assert any(not v.all() for i in items for v in i.landmark_valid)  # and withheld landmarks
    retina = WiderFaceDataset(root, split=split)  # auto: label.txt
    assert retina.annotation_kind == "retinaface"
    _assert_same(retina.records, items)
    official = WiderFaceDataset(root, split=split, annotations="bbx_gt")
    _assert_same(official.records, items, with_landmarks=False)
    assert retina.report.num_faces == sum(len(i.boxes) for i in items) and not retina.report


def test_aflw_reads_back_exactly(aflw_root):
    root, written = aflw_root
    ds = AFLWDataset(root, split="train")
    _assert_same(ds.records, written["train"])
    assert ds.num_landmarks == 19
    assert any(r.num_faces == 2 for r in ds.records)  # rows of one image grouped


@pytest.mark.parametrize("source", ["csv", "pts"])
def test_300w_reads_back_exactly(w300_root, source):
    root, written = w300_root
    ds = W300Dataset(root, split="test", source=source)
    assert ds.source == source and ds.num_landmarks == 68
    for rec, w in zip(ds.records, written["test"]):
        assert rec.image_path == w.path
        np.testing.assert_array_equal(rec.landmarks, w.landmarks)
        if source == "csv":
            np.testing.assert_allclose(rec.boxes, w.boxes, atol=1e-4)
        else:  # square around the landmarks' extent
            lm = w.landmarks[0]
            side = (lm.max(0) - lm.min(0)).max()
            np.testing.assert_allclose(rec.boxes[0, 2] - rec.boxes[0, 0], side, atol=1e-4)


def test_items_follow_the_model_contract(widerface_root):
    root, written = widerface_root
    ds = build_dataset(f"widerface:{root}", split="train")
    cfg = InputConfig()
    image, target = ds[1]
    raw = ds.load_raw(1)
    assert image.dtype == torch.float32 and image.shape == (3, raw.height, raw.width)
    # RGB order and normalisation
    expect = (raw.image[5, 7, ::-1].astype(np.float32) - np.array(cfg.pixel_mean)) / np.array(cfg.pixel_std)
    np.testing.assert_allclose(image[:, 5, 7].numpy(), expect, rtol=1e-5, atol=1e-5)
    assert set(target) == {"boxes", "landmarks", "landmark_valid"}
    g = len(written["train"][1].boxes)
    assert target["boxes"].shape == (g, 4) and target["boxes"].dtype == torch.float32
    assert target["landmarks"].shape == (g, 5, 2) and target["landmark_valid"].dtype == torch.bool
    empty_image, empty = ds[0]
    assert empty["boxes"].shape == (0, 4) and empty["landmarks"].shape == (0, 5, 2)
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, raw.height, raw.width) and len(targets) == 2


def test_collate_pads_unequal_sizes():
    a = (torch.ones(3, 10, 12), {"boxes": torch.zeros(0, 4)})
    b = (torch.ones(3, 14, 8), {"boxes": torch.zeros(0, 4)})
    images, targets = collate([a, b], size_divisibility=8)
    assert images.shape == (2, 3, 16, 16)
    assert images[0, :, :10, :12].eq(1).all() and images[0, :, 10:].eq(0).all()


# ------------------------------------------------------------------ errors

def test_missing_folders_and_files(tmp_path, widerface_root):
    with pytest.raises(FileNotFoundError, match="WIDER FACE root"):
        WiderFaceDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no WIDER FACE train annotations"):
        WiderFaceDataset(tmp_path)
    root, _ = widerface_root
    copy = tmp_path / "wf"
    shutil.copytree(root / "wider_face_split", copy / "wider_face_split")
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        WiderFaceDataset(copy, annotations="bbx_gt")
    with pytest.raises(FileNotFoundError, match="AFLW root"):
        AFLWDataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="300W"):
        W300Dataset(tmp_path)
    with pytest.raises(ValueError, match="KIND:PATH"):
        build_dataset("widerface")


BBX_CASES = [
    ("a.jpg\n1\n1 2 3\n", 3, "expected 10 numbers"),
    ("a.jpg\nx\n", 2, "must be an integer"),
    ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 3, "announces 2 faces"),
    ("a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n", 4, "expected an image path"),
    ("a.jpg\n1\n1 2 three 4 0 0 0 0 0 0\n", 3, "'three' is not a number"),
    ("a.jpg\n0\n5 5 5 5 0 0 0 0 0 0\n", 3, "non-zero box line"),
    ("a.jpg\n", 1, "no face count"),
]


@pytest.mark.parametrize("text,line,message", BBX_CASES)
def test_bbx_gt_malformed_lines(tmp_path, text, line, message):
    f = tmp_path / "wider_face_train_bbx_gt.txt"
    f.write_text(text)
    with pytest.raises(AnnotationFormatError, match=message) as err:
        read_bbx_gt(f, tmp_path)
    assert str(err.value).startswith(f"{f}:{line}:") and err.value.line == line


LABEL_CASES = [
    ("1 2 3 4\n", 1, "before the first"),
    ("# a.jpg\n1 2 3 4 5\n", 2, "got 5"),
    ("# a.jpg\n1 2 3 4\n# b.jpg\n1 2 3 nan\n", 4, "non-finite"),
    ("# a.jpg\n1 2 3 4\n#\n", 3, "without an image path"),
]


@pytest.mark.parametrize("text,line,message", LABEL_CASES)
def test_label_txt_malformed_lines(tmp_path, text, line, message):
    f = tmp_path / "label.txt"
    f.write_text(text)
    with pytest.raises(AnnotationFormatError, match=message) as err:
        read_retinaface_labels(f, tmp_path)
    assert str(err.value).startswith(f"{f}:{line}:")


def test_landmark_files_malformed(tmp_path, aflw_root):
    root, _ = aflw_root
    bad = tmp_path / "aflw"
    shutil.copytree(root, bad)
    csv_path = bad / "face_landmarks_aflw_train.csv"
    lines = csv_path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # drop a column on line 3
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationFormatError, match=r"face_landmarks_aflw_train.csv:3: expected 43 columns"):
        AFLWDataset(bad)
    cols = lines[1].split(",")
    cols[7] = "zz"  # a landmark coordinate that is not a number, on line 3
    lines[2] = ",".join(cols)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationFormatError, match=r":3: column 8: 'zz' is not a number"):
        AFLWDataset(bad)
    pts = tmp_path / "a.pts"
    pts.write_text("version: 1\nn_points: 3\n{\n1 2\n3 x\n5 6\n}\n")
    with pytest.raises(AnnotationFormatError, match=r"a.pts:5: point line"):
        read_pts(pts)
    pts.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(AnnotationFormatError, match="n_points is 3 but 2 points"):
        read_pts(pts)
    pts.write_text("version: 1\nn_points: 3\n{\n1 2\n")
    with pytest.raises(AnnotationFormatError, match="no '}'"):
        read_pts(pts)


def _copy_wider(root, tmp_path):
    copy = tmp_path / "wf"
    shutil.copytree(root, copy)
    return copy


def test_bad_samples_are_reported_not_dropped_silently(tmp_path, widerface_root):
    root, written = widerface_root
    copy = _copy_wider(root, tmp_path)
    (copy / "WIDER_train" / "images" / written["train"][2].name).unlink()
    label = copy / "train" / "label.txt"
    text = label.read_text().splitlines()
    face_line = next(i for i, line in enumerate(text) if not line.startswith("#"))
    parts = text[face_line].split()
    parts[2] = "0"  # zero width
    text[face_line] = " ".join(parts)
    label.write_text("\n".join(text) + "\n")
    with pytest.warns(DataWarning) as rec:
        ds = WiderFaceDataset(copy)
    summary = str(rec[0].message)
    assert "1 degenerate box" in summary and "1 missing image" in summary
    assert f"label.txt:{face_line + 1}" in summary and written["train"][2].name in summary
    assert len(ds) == len(written["train"]) - 1
    assert ds.report.counts == {"degenerate box": 1, "missing image": 1}
    with pytest.raises(DatasetError, match="strict"):
        WiderFaceDataset(copy, strict=True)


def test_unreadable_image_names_file_and_annotation(tmp_path, widerface_root):
    root, written = widerface_root
    copy = _copy_wider(root, tmp_path)
    target = copy / "WIDER_train" / "images" / written["train"][1].name
    target.write_bytes(b"\xff\xd8 this is not a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = WiderFaceDataset(copy)
    with pytest.raises(ImageReadError, match=r"cannot decode image .*0_Synthetic_train_0001.jpg \(annotated at .*label.txt:\d+\)"):
        ds[1]


def test_drop_invalid_faces_is_counted(tmp_path, widerface_root):
    root, written = widerface_root
    copy = _copy_wider(root, tmp_path)
    gt = copy / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    lines = gt.read_text().splitlines()
    idx = next(i for i, line in enumerate(lines) if len(line.split()) == 10 and line.split()[2] != "0")
    parts = lines[idx].split()
    parts[7] = "1"  # the `invalid` flag
    lines[idx] = " ".join(parts)
    gt.write_text("\n".join(lines) + "\n")
    kept = WiderFaceDataset(copy, annotations="bbx_gt")
    assert sum(r.num_faces for r in kept.records) == sum(len(w.boxes) for w in written["train"])
    assert sum(int(r.attributes["invalid"].sum()) for r in kept.records) == 1
    with pytest.warns(DataWarning, match="1 invalid face"):
        dropped = WiderFaceDataset(copy, annotations="bbx_gt", drop_invalid=True)
    assert sum(r.num_faces for r in dropped.records) == sum(len(w.boxes) for w in written["train"]) - 1
