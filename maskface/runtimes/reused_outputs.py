"""Detector outputs without an allocation and a copy per call.

The detector hands out 7 MB per 640x512 image on the demo model, almost all of it the context maps
m2..m6. ONNX Runtime's run() returns them as fresh arrays and OpenVinoGraph.run copies them out of its
request: 0.5 ms (ONNX Runtime FP32) and 0.7 ms (OpenVINO BF16) of a 30 / 17 ms detector on a 2-core
Zen 5 (docs/DEPLOYMENT.md 5.4). The pipeline reads them once, detect -> select -> keypoints, before its
next detect, so it can take arrays that the runtime keeps and overwrites on its next call: a
`run_transient`. Everything else keeps run(), whose arrays belong to the caller.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

#: Output sets kept per session (one per calling thread and input-shape signature); the preprocess pads
#: to multiples of 64, so a deployment sees few shapes.
MAX_SHAPES = 8


class ReusedOutputs:
    """An ONNX Runtime session run into output arrays it keeps (IOBinding), one set per calling thread
    and input-shape signature, the least recently used dropped beyond `max_shapes`. Per thread, so
    that the session stays as safe to share between threads as ONNX Runtime makes it."""

    def __init__(self, session, max_shapes: int = MAX_SHAPES):
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]
        self.max_shapes = max_shapes
        self._sets: OrderedDict[tuple, tuple] = OrderedDict()

    def run_transient(self, output_names: Sequence[str] | None,
                      feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Like session.run, into this object's arrays: the next call from this thread with the same
        input shapes overwrites them. Feeds must be C-contiguous arrays of the graph's input types."""
        key = (threading.get_ident(),) + tuple((name, feeds[name].shape, feeds[name].dtype.str)
                                               for name in sorted(feeds))
        kept = self._sets.get(key)
        if kept is None:
            # First call at these shapes: ONNX Runtime's own run says the output shapes; arrays of ours
            # (never memory ONNX Runtime might hand out again) are then bound for the calls after it.
            first = self.session.run(self.output_names, dict(feeds))
            arrays = {name: np.array(a, copy=True, order="C") for name, a in zip(self.output_names, first)}
            binding = self.session.io_binding()
            for name, array in arrays.items():
                binding.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data)
            kept = self._sets[key] = (binding, arrays)
            while len(self._sets) > self.max_shapes:
                self._sets.popitem(last=False)
        else:
            binding, arrays = kept
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            self.session.run_with_iobinding(binding)
        self._sets.move_to_end(key)
        return [kept[1][name] for name in (output_names or self.output_names)]
