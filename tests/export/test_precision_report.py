"""export/precision_report.py: the per-path report's plumbing (the comparisons are
tests/export/test_precision_compare.py's; the figures come from running it on the demo data)."""
from __future__ import annotations

import numpy as np
import pytest

from export import precision_report


def test_reference_outputs_are_computed_once_per_image():
    calls = []

    class Pipeline:
        inference = "cfg"

        def __call__(self, image):
            calls.append(int(image[0, 0, 0]))
            return {"n": len(calls)}

    reused = precision_report.ReusedOutputs(Pipeline())
    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    assert reused(a) == {"n": 1} and reused(b) == {"n": 2} and reused(a.copy()) == {"n": 1}
    assert calls == [0, 1] and reused.inference == "cfg"


def test_missing_data_and_unknown_paths_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        precision_report.main(["--data", str(tmp_path / "none")])
    assert "maskface demo-data --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        precision_report.main(["--paths", "fp8", "--data", str(tmp_path)])
    assert "unknown --paths ['fp8']" in capsys.readouterr().err


def test_summary_lists_every_path_and_says_why_one_did_not_run():
    drift = {"box_px": {"max": 0.9, "p99": 0.5}, "landmark_px": {"max": 1.5, "p99": 0.8}, "lost": 1, "added": 0}
    paths = {"fp32": {"recall": 0.95, "fp_per_image": 0.2, "nme_mean": 0.04, "nme_faces": 10},
             "int8": {"recall": 0.94, "fp_per_image": 0.25, "nme_mean": 0.041, "nme_faces": 10}}
    rows = [{"path": "int8", "what": "w", "report": {"paths": paths, "drift": drift,
                                                     "goals": [{"passed": True}, {"passed": False}]}},
            {"path": "bf16", "what": "w", "error": "no native BF16 on this CPU"}]
    md = precision_report.summary_markdown(rows, {"checkpoint": "c.pth", "images": 3, "score_threshold": 0.5})
    assert "| int8 | w | 0.9400 | 0.250 | 0.0410 | 0.900 / 0.500 | 1.500 / 0.800 | 1 / 0 | NO |" in md
    assert "| bf16 | w | not run: no native BF16 on this CPU |" in md
    assert "FP32 reference: recall 0.9500" in md


def test_dithered_input_adds_bounded_seeded_noise_and_clips():
    seen = []

    class Pipeline:
        inference = "cfg"

        def __call__(self, image):
            seen.append(image)
            return {}

    image = np.full((40, 50, 3), 128, np.uint8)
    image[0, :, :] = 0      # the noise may not wrap below 0 ...
    image[1, :, :] = 255    # ... nor above 255
    dither = precision_report.DitheredInput(Pipeline(), levels=1, seed=0)
    dither(image)
    dither(image.copy())
    first, again = seen
    diff = first.astype(int) - image.astype(int)
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert np.array_equal(first, again)                               # same image, same noise
    assert set(np.unique(diff[2:])) == {-1, 0, 1}                     # every value of +-1 occurs
    assert 0.5 < np.count_nonzero(diff[2:]) / diff[2:].size < 0.8     # 2 of 3 values move
    assert set(np.unique(diff[0])) <= {0, 1} and set(np.unique(diff[1])) <= {-1, 0}
    other = image.copy()
    other[20, 20, 0] = 127
    assert not np.array_equal(dither.noisy(other)[2:19], first[2:19])  # another image, other noise
    assert not np.array_equal(precision_report.DitheredInput(Pipeline(), seed=1).noisy(image), first)
    assert dither.inference == "cfg"
    with pytest.raises(ValueError, match="levels must be >= 1"):
        precision_report.DitheredInput(Pipeline(), levels=0)
