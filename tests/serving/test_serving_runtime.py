"""The one pipeline (maskface.pipeline.Pipeline) driving the sub-models of the real server through
TritonRuntime gives the in-process reference's answers (OnnxPredictor: the same pipeline on
OrtRuntime), i.e. a Triton client is just another runtime."""
from __future__ import annotations

import numpy as np
import pytest

from serving_testlib import MAX_SIDE, low_inference

pytest.importorskip("tritonclient.http")


def test_pipeline_on_the_triton_runtime_matches_the_reference(server, photos, reference):
    from maskface.config import InputConfig
    from maskface.pipeline import Pipeline
    from maskface.preprocess import decode_image
    from maskface.runtimes.triton_runtime import TritonRuntime
    from test_serving_server import mismatch

    runtime = TritonRuntime(server.http_url)
    try:
        pipeline = Pipeline(runtime, low_inference(), InputConfig(), max_side=MAX_SIDE)
        for name, data in photos.items():
            got = pipeline(decode_image(data))
            assert len(reference[name]["scores"]) > 0
            assert mismatch(got, reference[name]) is None, f"{name}: {mismatch(got, reference[name])}"
        empty = pipeline(np.full((64, 80, 3), 127, np.uint8))  # no face: N = 0 through the keypoint model too
        assert empty["landmarks"].shape == (0, 5, 2) and empty["boxes"].shape == (0, 4)
    finally:
        runtime.close()
