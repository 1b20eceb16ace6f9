"""The synthetic generator: exact, symmetric landmarks drawn where they are annotated."""
import numpy as np

from maskface.data import synthetic
from maskface.data.landmark_sets import flip_permutation
from maskface.data.widerface import WiderFaceDataset


def test_template_is_mirror_symmetric_under_each_flip_permutation():
    t = synthetic.TEMPLATE_68
    mirrored = t * [-1, 1]
    np.testing.assert_allclose(mirrored[list(flip_permutation(68))], t, atol=1e-12)
    box = (10, 20, 74, 100)
    lm68 = synthetic.face_landmarks_68(box)
    for k, fn in ((5, synthetic.landmarks_5), (19, synthetic.landmarks_19)):
        pts = fn(lm68) - [(box[0] + box[2]) / 2, 0]
        np.testing.assert_allclose((pts * [-1, 1])[list(flip_permutation(k))], pts, atol=1e-9)
    assert np.array_equal(lm68 * 8, np.round(lm68 * 8))  # multiples of 1/8 px


def test_faces_are_drawn_where_annotated():
    rng = np.random.default_rng(0)
    image, boxes, lm68 = synthetic.synth_image(rng, 256, 256, 3, (48, 96))
    assert len(boxes) == 3
    for i in range(3):
        for j in range(i + 1, 3):  # no overlap
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    lm5 = synthetic.landmarks_5(lm68)
    for pts, box in zip(lm5, boxes):
        for x, y in pts[:2]:  # dark irises at the eye landmarks
            assert image[int(y), int(x)].max() < 80
        assert (box[:2] <= pts).all() and (pts <= box[2:]).all()


def test_command_line_writes_a_readable_dataset(tmp_path, capsys):
    assert synthetic.main(["widerface", str(tmp_path), "--num-images", "3", "--size", "128", "96"]) == 0
    assert "widerface train: 3 images" in capsys.readouterr().out
    ds = WiderFaceDataset(tmp_path, split="val")
    assert len(ds) == 3 and ds[2][0].shape == (3, 96, 128)
