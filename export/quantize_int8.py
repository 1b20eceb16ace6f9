"""Static INT8 graphs for the CPU target (ONNX Runtime, QDQ format), calibrated on the demo train split.

    python export/quantize_int8.py [--checkpoint PATH] [--data runs/demo-data] [--out artifacts/onnx_int8]
                                   [--calibration-images 32] [--report-images 100] [--onnx-dir DIR]

1. exports the FP32 detector.onnx + keypoint_head_portable.onnx (export/export_onnx.py) into --out, or
   takes them from --onnx-dir;
2. folds the frozen BatchNorms into the convolutions (onnxruntime.quantization.quant_pre_process);
3. calibrates on --calibration-images images of the TRAIN split, preprocessed as the pipeline does
   (maskface.preprocess.prepare_image, longer side 640), and writes the ranges to calibration_*.json;
4. writes detector_int8.onnx (and, with --keypoint-head-int8, keypoint_head_portable_int8.onnx):
   the FP32 graphs' input / output names, types and shapes, so maskface.runtimes.ort_runtime.OrtRuntime
   and the Triton `cpu` stages load them unchanged;
5. compares the INT8 pipeline with the FP32 one on the first --report-images images of the VAL split
   (export/precision_compare.py) and times the two detectors interleaved at 640x480; writes
   OUT/report/precision_compare.{json,md} (+ drift plot).

What is quantised, and why (demo model, ONNX Runtime 1.32, this 2-core AVX-512 VNNI CPU; every time is a
ratio of medians with FP32 and INT8 runs interleaved in one process, 1 thread; the demo training ran
beside it, so absolute ms are inflated and ratios scatter by ~0.1 between runs):

* U8S8: UINT8 asymmetric activations, INT8 symmetric per-channel weights. ONNX Runtime's x86 QLinearConv
  takes U8S8 directly; S8S8 ran at 1.80x FP32 time (convs only, random 640x448 input) and 1.64x (the
  default node set, sweep below), U8S8 at 0.91x / 0.59x.
* Weight range (--weight-range, default auto): on a CPU without VNNI the U8S8 kernels add pairs of products
  in int16 and saturate, so auto quantises the weights to -64..64 there (reduced_weight_range; demo model on
  an AVX2 EPYC, box p99 at FP32's anchors in OpenVINO 8.74 px full range, 2.89 reduced; docs/DEPLOYMENT.md 5.2).
* Conv, Relu and Clip nodes of the backbone, FPN and context modules: the Relu / Clip fold into the
  quantised conv's output range, so no Dequantize/Quantize pair is left between conv and activation.
  Detector time / FP32 at 640x448: convs only 0.80x, convs + activations 0.70x, also the Add / Mul /
  Concat / Resize / MaxPool / Reshape around the GroupNorms 0.64x (not taken: the InstanceNormalization
  stays FP32 behind its own Dequantize, and m2..m6, which the keypoint head reads, get one more rounding).
* FP32: the detection head's score and box-delta convs (their outputs are the scores and boxes; box
  deltas scale with the face, so a UINT8 step on them is pixels on a large face), the anchor decoding,
  TopK, the GroupNorms, and the keypoint head.
* keypoint head: FP32 by default. Its four 3x3 convs in INT8 run at 0.82x (5 ROIs) / 0.92x (20 ROIs) of
  its FP32 time, i.e. 1.7 / 2.8 ms saved next to a ~150 ms detector; not worth a landmark drift.
  --keypoint-head-int8 quantises those convs (the deconv, heatmap softmax and decoding stay FP32).
  Measured on the demo model (Percentile, rois of the FP32 detector on the 32 calibration images; first
  50 val images, detector FP32): landmark drift median 0.03 px, p90 0.12, p99 0.67, max 22.6 (one
  heatmap argmax flip), NME 0.0957 -> 0.0958, keypoint head time 0.78x (1.8 -> 1.4 ms for one ROI).
  With the INT8 detector too: landmark p99 5.2 px, as without it: the detector's drift dominates.
* calibration: Percentile (99.999 %, ORT's default). `--sweep 30 --method minmax` (30 val images, 32 train images to
  calibrate, keypoint head FP32), INT8 vs FP32 pipeline, drift in px of the original image:

  | variant | box p99 | box max | box p99 / side | landmark p99 | landmark max | lost / added | recall FP32 -> INT8 | time |
  |---|---|---|---|---|---|---|---|---|
  | all, MinMax | 13.3 | 14.4 | 0.134 | 5.81 | 24.0 | 0 / 0 | 0.868 -> 0.868 | 0.59 |
  | all, Percentile | 7.9 | 14.2 | 0.091 | 5.65 | 46.8 | 1 / 1 | 0.868 -> 0.876 | 0.76 |
  | all, Entropy | 10.9 | 14.5 | 0.094 | 5.93 | 47.2 | 1 / 0 | 0.868 -> 0.868 | 0.66 |
  | all, MinMax, S8S8 | 13.4 | 14.6 | 0.136 | 5.89 | 24.4 | 0 / 0 | 0.868 -> 0.868 | 1.64 |
  | all but the stem conv, MinMax | 9.3 | 14.5 | 0.086 | 5.74 | 25.9 | 0 / 1 | 0.868 -> 0.876 | 0.77 |
  | all but the rest of stage 0, MinMax | 8.6 | 16.3 | 0.142 | 3.67 | 26.1 | 0 / 0 | 0.868 -> 0.868 | 0.71 |
  | all but the depthwise convs, MinMax | 9.1 | 13.1 | 0.144 | 4.03 | 46.2 | 0 / 0 | 0.868 -> 0.868 | 0.93 |
  | all but stage 3, FPN + context of strides 8-64, MinMax | 13.8 | 14.6 | 0.137 | 5.26 | 24.3 | 0 / 0 | 0.868 -> 0.868 | 0.77 |
  | all + the detection head, MinMax | 13.3 | 14.2 | 0.131 | 5.83 | 24.1 | 0 / 0 | 0.868 -> 0.868 | 0.72 |

  (50 images, an earlier run: MinMax box p99 14.6 / landmark p99 7.3, Percentile 9.7 / 5.3; recall
  0.884 -> 0.890 both.) Percentile gives the lowest box tail at the same landmark tail and no recall
  loss; Entropy is no better and took 779 s to calibrate 32 images (Percentile 191 s, MinMax 44 s).
  The last three rows ran outside --sweep (same images, cache and code path); --sweep's rows for stages
  1-3, FPN and the context groups one by one were not run to the end in this session (the machine was
  shared with training); `--sweep N` runs them. What the rows say: the median box moves by ~0.9 px
  (p90 ~3 px, 30 images, MinMax), and the tail is NMS keeping another candidate of the same face after
  a score change, which no group kept in FP32 removes. The detection head in INT8 changes neither
  drift nor time measurably (1x1 convs with 2-8 outputs); it stays FP32 because that costs nothing.
  Depthwise convs in FP32 lose most of the gain (0.93x) without a smaller median drift.

* channel equalisation (export/equalize.py, on by default; --no-equalize, --max-gain): before calibration,
  the 34 Conv -> Relu -> Conv chains of the MobileNetV2 trunk are rescaled so that each Relu output's
  channels share its range (FP32 function unchanged to 1e-4 of each map). Shipped demo model (stage 2),
  Percentile, 32 calibration images, all 400 val images, consensus labels, 2-core Zen 5 EPYC, against
  PyTorch FP32 (export/precision_report.py):

  | INT8 detector | recall (FP32 0.9750) | FP / image (0.128) | NME (0.0656) | box p99 / max | landmark p99 / max | lost / added |
  |---|---|---|---|---|---|---|
  | ONNX Runtime, not equalised | 0.9734 | 0.128 | 0.0658 | 6.86 / 46.9 | 3.29 / 177 | 11 / 7 |
  | ONNX Runtime, equalised | 0.9750 | 0.135 | 0.0660 | 6.17 / 45.6 | 2.19 / 104 | 5 / 8 |
  | OpenVINO, not equalised | 0.9734 | 0.133 | 0.0658 | 7.45 / 19.7 | 3.14 / 164 | 13 / 11 |
  | OpenVINO, equalised | 0.9742 | 0.135 | 0.0654 | 5.59 / 31.0 | 2.11 / 98.3 | 3 / 5 |

  Equalisation halves the FP32 detections lost at the threshold and cuts the landmark tail by a third; the box
  tail (NMS keeping another candidate of the same face) shrinks by 10-25 % only. It is not free of
  risk: a channel brought up to the tensor's range has no headroom left, so an input beyond its
  calibrated maximum clips. On tests/export/test_equalize.py's hand-built graph (uniform noise in) the
  INT8 output error was 0.69x on the calibration inputs but 0.9-2.8x on fresh ones (5 input sizes /
  calibration counts); on the demo model's real images the table above is what counts.

* bias correction (export/bias_correction.py, on by default; --no-bias-correction): after quantisation,
  each quantised conv's INT32 bias loses (W_q - W) . E[x], the mean that its weight rounding adds,
  with E[x] measured on the calibration images; the bias-free FPN / context convs get an INT32 bias.
  Why weights: with every activation Quantize/Dequantize pair replaced by a clamp to its range (no
  rounding), the equalised ONNX Runtime graph still moved boxes by 4.46 px p99 (6.17 with rounding;
  4.18 unequalised), so weight rounding carries most of the drift. Same setting as the table above:

  | INT8 detector (equalised) | recall | FP / image | NME | box p99 / p90 / median | landmark p99 | lost / added |
  |---|---|---|---|---|---|---|
  | ONNX Runtime, no bias correction | 0.9750 | 0.135 | 0.0660 | 6.17 / 1.69 / 0.39 | 2.19 | 5 / 8 |
  | ONNX Runtime, trunk convs only (51 with a bias) | 0.9750 | 0.133 | 0.0655 | 5.60 / 1.50 / 0.32 | 1.98 | 3 / 4 |
  | ONNX Runtime, all 84 quantised convs (default) | 0.9750 | 0.130 | 0.0654 | 5.07 / 1.52 / 0.32 | 2.06 | 4 / 4 |
  | OpenVINO, all 84 (the served int8) | 0.9750 | 0.133 | 0.0655 | 4.89 | 1.94 | 3 / 4 |

  The floor these compare with: the FP32 model itself, on each image plus +-1 grey level of seeded
  noise (precision_report's fp32-dither), moves boxes by 2.00 px p99 (median 0.10) and landmarks by
  0.82 px p99, and loses one face of 1,279 (recall 0.9742). So 1 px p99 with no face lost is below
  what FP32 holds against an input change far smaller than JPEG's; INT8 was then 2.5x that floor.
  Tried and dropped (throw-away scripts, same images): the four convs whose FP32 weights cut the
  feature-map error most kept in FP32 (box p99 9.85, worse: their neighbours' ranges change); an
  all-at-once empirical correction of each conv's output mean, iterated (diverged); the GroupNorm
  rewritten into per-channel reductions so OpenVINO keeps its blocked layout (INT8 1.34x slower,
  BF16 0.96x, FP32 83 -> 49 ms, where the served FP32 path is ONNX Runtime anyway).

* weight rounding (export/weight_rounding.py, on by default; --no-weight-rounding): after quantisation
  and before the bias correction, each quantised conv's INT8 weights are rounded column by column,
  each rounding error compensated on the weights not yet rounded through the inputs' measured second
  moments (GPTQ's procedure; scales and zero points as the quantiser chose them). Same setting:

  | INT8 detector (equalised, bias-corrected) | recall | FP / image | NME | box p99 | landmark p99 / max | lost / added |
  |---|---|---|---|---|---|---|
  | ONNX Runtime, rounded to nearest | 0.9750 | 0.130 | 0.0654 | 5.07 | 2.06 / 161 | 4 / 4 |
  | ONNX Runtime, weight rounding (default) | 0.9758 | 0.125 | 0.0660 | 4.95 | 1.94 / 62.4 | 2 / 2 |
  | OpenVINO, rounded to nearest | 0.9750 | 0.133 | 0.0655 | 4.89 | 1.94 / 61.9 | 3 / 4 |
  | OpenVINO, weight rounding (the served int8) | 0.9750 | 0.122 | 0.0655 | 4.75 | 1.71 / 62.6 | 7 / 4 |

  Each conv's own output error on the calibration inputs falls to 0.18x of round-to-nearest's (median
  over the 84 convs), yet with the selection held fixed (export/anchor_drift.py: each path's box at
  FP32's own anchors) the box p99 stays 2.96-3.17 px either way (FP32 + noise: 1.01) while the
  landmark p99 drops (OpenVINO 1.78 -> 1.48): what is left of the box drift is in the activations.
* Unclipped FP32 activations (--unclipped-fp32, default the backbone's stages 2 and 3): after quantisation,
  the unsigned activations (ranges from 0, after a Relu) under those names leave INT8, neither clipped to
  their calibrated range nor rounded (keep_unclipped_fp32); their convs read FP32. export/int8_error_sources.py
  found the clipping of activations to their Percentile ranges to be most of the box drift (INT8 weights
  alone 0.83 px p99 at FP32's anchors; the unsigned activations clipped 2.46; the whole graph 3.20), and
  nearly all of that clipping's share in these two stages (backbone stage 3's 8 alone: 2.37 px, stage 2's
  14 alone: 1.20; any other part's within 0.02 px of the weights alone; 200 val images). Measured on the
  AVX2 EPYC, reduced range, 400 val images, at FP32's anchors (box median / p90 / p99, landmark p99; ONNX
  Runtime, OpenVINO in brackets), OpenVINO INT8 time / ONNX Runtime FP32 (20 paired rounds, 640x480):

  | unclipped FP32 | activations | box | landmark p99 | time |
  |---|---|---|---|---|
  | none ('') | 0 | 0.30 / 1.00 / 3.20 (0.30 / 1.01 / 2.89) | 1.71 (1.57) | 0.58-0.62 |
  | stage 3 | 8 | 0.30 / 0.86 / 2.46 (0.30 / 0.83 / 2.43) | 1.33 (1.48) | 0.60 (none: 0.58, same run) |
  | stages 2 and 3 (default) | 22 | 0.27 / 0.87 / 2.30 (0.28 / 0.81 / 2.21) | 1.28 (1.23) | 0.65 (none: 0.62, same run) |

  The whole pipeline against FP32 (export/precision_report.py, matched detections, 400 val images; before ->
  with the default): ONNX Runtime recall 0.9742 -> 0.9742, FP / image 0.128 -> 0.120, NME 0.0658 -> 0.0657,
  box p99 5.38 -> 3.43 px, landmark p99 2.00 -> 1.37, lost / added 4 / 3 -> 4 / 0; OpenVINO recall 0.9750 ->
  0.9750 (FP32's), FP / image 0.122 -> 0.125, NME 0.0658 -> 0.0659, box p99 4.92 -> 3.90, landmark p99 1.89 ->
  1.39, lost / added 4 / 2 -> 4 / 3 (benchmarks/results/precision_demo_avx2_unclipped.md). benchmarks/latency.py
  (20 rounds, latency_cpu_demo_epyc_avx2_unclipped.md): OpenVINO INT8 detector 0.72x ONNX Runtime FP32 (paired
  0.67; the graph before: 0.65, paired 0.64); ONNX Runtime INT8 0.95x (0.97; before 0.79, 0.77): ONNX Runtime
  fuses a conv into its INT8 kernel only when its output is quantised too, so the convs around these
  activations run in FP32 there. For ONNX Runtime INT8, --runtime onnxruntime keeps its speed (and the drift).
* Activations no conv reads (--runtime openvino, the default): after the above, the 43 activations whose
  readers are all floating-point ops (33 conv outputs into a GroupNorm, 10 into a residual Add) leave INT8,
  neither clipped nor rounded (keep_float_read_fp32). The quantiser had put a Quantize / Dequantize pair on
  each conv output so that ONNX Runtime can fuse conv and requantisation; OpenVINO's INT8 convs write FP32
  where the reader wants it, so there the pair bought no kernel and cost drift. export/int8_error_sources.py
  on the graph with the unclipped stages (--by-scope, 400 val images; benchmarks/results/
  int8_error_sources_demo_avx2_unclipped_scopes.md): no part's activations, quantised alone, take the
  weights' 0.83 px p99 beyond 1.35; clipping every signed activation alone takes it to 1.47. Same setting as
  the table above:

  | graph | box (ONNX Runtime; OpenVINO) | landmark p99 | OpenVINO INT8 / ONNX Runtime FP32 | ONNX Runtime INT8 / FP32 |
  |---|---|---|---|---|
  | stages 2 and 3 unclipped | 0.27 / 0.87 / 2.30 (0.28 / 0.81 / 2.21) | 1.28 (1.23) | 0.650 | 0.981 |
  | + activations no conv reads (--runtime openvino) | 0.24 / 0.71 / 1.90 (0.24 / 0.71 / 1.71) | 1.10 (1.04) | 0.653 | 1.342 |

  (times: 20 paired rounds, 640x480, one run; benchmarks/results/anchor_drift_demo_avx2_float_read.md.) In
  ONNX Runtime those convs lose their INT8 kernel, so --runtime onnxruntime builds neither step: every
  conv keeps its INT8 kernel there (0.79x FP32 in latency_cpu_demo_epyc_avx2.md) and box p99 is 3.20 px.
  On a Zen 5 EPYC (VNNI: full range; native BF16, so the served int8 runs the floating-point layers in BF16:
  openvino_runtime.inference_hint), same 400 images: box p99 at FP32's anchors 1.93 px in OpenVINO (the
  --runtime onnxruntime graph 3.17), 2.03 in ONNX Runtime (2.96); OpenVINO INT8 detector 0.46x ONNX Runtime
  FP32 (latency_cpu_demo_epyc_zen5_float_read.md, paired; with those layers in FP32 0.60x).

Earlier default (no equalisation; interim demo model; Percentile, 32 calibration images), INT8 detector + FP32
keypoint head vs the FP32 graphs, first 100 val images: recall 0.887 -> 0.884 (259 -> 258 of 292 faces), FP / image 0.100 -> 0.100,
5-point NME 0.0981 -> 0.0983; box drift median 0.80 px, p90 4.1, p99 15.0, max 27.6 (relative to the
face: median 1.1 %, p99 12 %); landmark drift median 0.29 px, p90 1.19, p99 4.9, max 46.8; score drift
max 0.15; 4 reference detections lost (all scored <= 0.527, threshold 0.5), 2 added. Detector time
INT8 / FP32 at 640x480 (padded 640x512): 0.75 (21 interleaved rounds, 1 thread, under training load).
INT8 on this model does NOT meet issue #15's p99 <= 1 px and loses one face in 292 at the threshold.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

DETECTOR_INT8_FILE = "detector_int8.onnx"
KEYPOINT_INT8_FILE = "keypoint_head_portable_int8.onnx"
#: Module scopes (TorchScript exporter node-name prefixes) whose nodes may be quantised.
DETECTOR_SCOPES = ("/backbone/", "/fpn/", "/context.")
KEYPOINT_SCOPES = ("/keypoint_head/convs/",)
#: Op types quantised: convolutions, and the activations that fold into their output range.
QUANTISED_OPS = ("Conv", "Relu", "Clip")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# The detector's unsigned activations kept FP32 and unclipped by default (--unclipped-fp32): those of the demo
# model's backbone stages 2 and 3, whose clipping to the Percentile ranges is most of INT8's box drift
# (export/int8_error_sources.py; measured in the module doc)
DETECTOR_UNCLIPPED_FP32 = ("/backbone/stages.2/", "/backbone/stages.3/")
# The runtime a detector graph is quantised for (--runtime) -> its defaults: (unclipped_fp32, float_read_fp32).
# ONNX Runtime runs a conv on its INT8 kernel only when the conv's input AND output are quantised, so every
# activation left in FP32 costs it time; OpenVINO's INT8 convs take FP32 outputs, and FP32 inputs cost it
# only those convs (module doc)
RUNTIME_DEFAULTS = {"openvino": (DETECTOR_UNCLIPPED_FP32, True), "onnxruntime": ((), False)}
TIMING_SIZE = (480, 640)  # (height, width) of the detector timing input, before padding to 64
MISSING_DATA_HINT = ("build the demo data first: `maskface demo-data --out {data}` (or `bash scripts/train_demo.sh`, "
                     "which builds it and trains the demo model)")


@dataclass
class Int8Settings:
    """What to quantise and how (the module doc's decision)."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    method: str = "percentile"
    per_channel: bool = True
    op_types: tuple[str, ...] = QUANTISED_OPS
    scopes: tuple[str, ...] = DETECTOR_SCOPES
    keep_fp32: tuple[str, ...] = ()  # node-name prefixes kept FP32 inside the scopes
    # tensor-name prefixes whose unsigned activations (ranges from 0: after a Relu) stay FP32, neither clipped
    # to a calibrated range nor rounded: keep_unclipped_fp32
    unclipped_fp32: tuple[str, ...] = ()
    # activations no conv reads (conv outputs into a GroupNorm or a residual Add) stay FP32, unclipped and
    # unrounded: keep_float_read_fp32
    float_read_fp32: bool = False
    equalize: bool = True  # export/equalize.py on the prepared graph before calibrating
    max_gain: float = 100.0  # equalisation's bound on one channel's gain
    weight_rounding: bool = True  # export/weight_rounding.py on the quantised graph, before bias correction
    bias_correction: bool = True  # export/bias_correction.py on the quantised graph
    # full (-127..127) or reduced (-64..64) weights; auto: reduced on a CPU without VNNI, which adds pairs
    # of U8 x S8 products in int16 and saturates beyond 32,767 (|w| <= 64: 255 x 64 x 2 = 32,640)
    weight_range: str = "auto"

    def quant_types(self):
        from onnxruntime.quantization import QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        return types[self.activation_type], types[self.weight_type]

    def calibration_method(self):
        from onnxruntime.quantization import CalibrationMethod

        return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[self.method]


class MissingDataError(FileNotFoundError):
    pass


def require_split(data: str | Path, split: str) -> Path:
    """DATA/split/label.txt, or an error that says how to build the demo data."""
    label = Path(data) / split / "label.txt"
    if not label.is_file():
        raise MissingDataError(f"{label} not found: {MISSING_DATA_HINT.format(data=data)}")
    return label


def sample_records(data: str | Path, split: str, count: int) -> list:
    """`count` annotated images of the split, evenly spaced over it (deterministic)."""
    from export.precision_compare import load_val_records

    require_split(data, split)
    records = load_val_records(data, split)
    if count >= len(records):
        return records
    return [records[i] for i in np.linspace(0, len(records) - 1, count).round().astype(int)]


def network_inputs(records: Sequence, input_cfg, max_side: int = 640, progress: bool = True) -> list[np.ndarray]:
    """The detector inputs [1, 3, H, W] of the records, preprocessed as maskface.pipeline.Pipeline does."""
    from tqdm import tqdm

    from maskface.data.dataset import read_image
    from maskface.preprocess import prepare_image

    return [prepare_image(read_image(r.image_path, r.source), input_cfg, max_side).image[None]
            for r in tqdm(records, desc="read calibration images", dynamic_ncols=True, disable=not progress)]


def keypoint_feeds(detector_path: Path, images: Iterable[np.ndarray], inference) -> list[dict[str, np.ndarray]]:
    """Keypoint-head inputs as the pipeline gives them: the FP32 detector's m2..m6 and the rois of its
    selected detections (images without a detection are skipped)."""
    from maskface.contracts import FEATURE_NAMES
    from maskface.pipeline import rois_of, select_candidates
    from maskface.runtimes.ort_runtime import ort_session

    session = ort_session(detector_path)
    feeds = []
    for image in images:
        scores, boxes, *features = session.run(None, {"images": image})
        keep = select_candidates(scores[0], boxes[0], inference)
        if len(keep):
            feeds.append({**dict(zip(FEATURE_NAMES, features)), "rois": rois_of(boxes[0][keep])})
    return feeds


class _ListReader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def prepare_graph(fp32_path: Path, out_path: Path) -> Path:
    """Fold the frozen BatchNorm Mul/Add into the convs and run shape inference (ORT's quantisation
    pre-processing). Symbolic shape inference is skipped: ONNX shape inference covers these graphs."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def calibration_graph(fp32_path: Path, work: Path, feeds: Sequence[dict], settings: Int8Settings) -> tuple[Path, dict]:
    """The graph to calibrate and quantise: prepare_graph's, then (settings.equalize) channel-equalised
    on the calibration feeds. Returns it with what the equalisation did (empty when off)."""
    from export.equalize import equalize_graph

    prepared = prepare_graph(fp32_path, work / f"{fp32_path.stem}_prepared.onnx")
    if not settings.equalize:
        return prepared, {}
    summary = equalize_graph(prepared, work / f"{fp32_path.stem}_equalized.onnx", feeds, settings.max_gain)
    return work / f"{fp32_path.stem}_equalized.onnx", vars(summary)


def quantisable_nodes(graph_path: Path, settings: Int8Settings) -> list[str]:
    """Names of the nodes the settings quantise: op type in settings.op_types, inside a scope, not kept."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in settings.op_types and n.name.startswith(settings.scopes)
            and not n.name.startswith(settings.keep_fp32 or ("\0",))]


def calibrate(graph_path: Path, feeds: Sequence[dict], cache_path: Path, settings: Int8Settings,
              chunk: int = 4, progress: bool = True) -> Path:
    """Tensor ranges of every input / output of the settings' op types, collected `chunk` feeds at a
    time (MinMax keeps a chunk's activations in memory; the histogram methods take one feed at a time
    and keep histograms), saved as ORT's calibration cache (JSON), which quantize_static then reads."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from tqdm import tqdm

    if settings.method != "minmax":
        chunk = 1  # ORT's histogram collector stacks a chunk's arrays: images of different sizes must go one by one
    with tempfile.TemporaryDirectory(prefix="maskface-int8-") as tmp:
        calibrator = create_calibrator(graph_path, list(settings.op_types),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=settings.calibration_method())
        bar = tqdm(total=len(feeds), desc=f"calibrate {graph_path.name} ({settings.method})", dynamic_ncols=True,
                   disable=not progress)
        for start in range(0, len(feeds), chunk):
            part = feeds[start:start + chunk]
            calibrator.collect_data(_ListReader(part))
            bar.update(len(part))
        bar.close()
        ranges = calibrator.compute_data()
        del calibrator
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache_path)
    return cache_path


#: --weight-range choices.
WEIGHT_RANGES = ("auto", "full", "reduced")


def reduced_weight_range(choice: str, cpuinfo_text: str | None = None) -> bool:
    """Whether the weights take the reduced range: `choice` reduced / full, or auto: reduced where this CPU
    (cpuinfo_text, default /proc/cpuinfo) has no VNNI (maskface.runtimes.cpu_features.VNNI_FLAGS), full
    where it has or where there is no /proc/cpuinfo to tell."""
    from maskface.runtimes.cpu_features import VNNI_FLAGS, cpuinfo_flags, read_cpuinfo

    if choice not in WEIGHT_RANGES:
        raise ValueError(f"weight range {choice!r} must be one of {', '.join(WEIGHT_RANGES)}")
    if choice != "auto":
        return choice == "reduced"
    text = read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    return text is not None and not cpuinfo_flags(text, VNNI_FLAGS)


def keep_unclipped_fp32(model, scopes: Sequence[str]):
    """(copy of QDQ `model`, tensors): the unsigned activations whose names start with one of `scopes` taken out
    of INT8 (export/int8_mixed.keep_fp32 with clip=False: the Relu the quantiser folded into their range
    stays, the clip to their calibrated range goes). Their convs then read FP32."""
    from export.int8_mixed import activations, is_signed, keep_fp32

    scopes = tuple(scopes)
    tensors = [a.tensor for a in activations(model, hw=None)
               if scopes and a.tensor.startswith(scopes) and not is_signed(model, a)]
    return keep_fp32(model, tensors, clip=False), tensors


def keep_float_read_fp32(model):
    """(copy of QDQ `model`, tensors): the activations that no Conv reads taken out of INT8, neither clipped nor
    rounded (export/int8_mixed.keep_fp32 with clip=False). Quantising them buys no INT8 kernel where the
    runtime's INT8 convs may write FP32 (OpenVINO): their readers (GroupNorm, a residual Add) compute in FP32."""
    from export.int8_mixed import activations, keep_fp32

    op_type = {n.name: n.op_type for n in model.graph.node}
    tensors = [a.tensor for a in activations(model, hw=None) if not any(op_type[r] == "Conv" for r in a.readers)]
    return keep_fp32(model, tensors, clip=False), tensors


def quantize_graph(prepared_path: Path, out_path: Path, cache_path: Path, settings: Int8Settings,
                   fp32_path: Path | None = None, feeds: Sequence[dict] = ()) -> Path:
    """QDQ graph of the settings' nodes from a calibration cache, its weights re-rounded and its biases
    corrected on `feeds` (settings.weight_rounding, settings.bias_correction; the calibration inputs); its I/O contract is checked against
    `fp32_path` (default: the prepared graph). Written atomically."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from export.bias_correction import correct_biases
    from export.weight_rounding import round_weights

    activation, weight = settings.quant_types()
    reduce_range = reduced_weight_range(settings.weight_range)
    tmp = out_path.with_suffix(".onnx.tmp")
    quantize_static(str(prepared_path), str(tmp), None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                    activation_type=activation, weight_type=weight,
                    nodes_to_quantize=quantisable_nodes(prepared_path, settings),
                    calibrate_method=settings.calibration_method(), calibration_cache_path=str(cache_path),
                    reduce_range=reduce_range)
    if settings.weight_rounding or settings.bias_correction:
        if not feeds:
            raise ValueError("weight rounding and bias correction measure the conv inputs: pass the calibration feeds")
        quantised, fp32 = onnx.load(str(tmp)), onnx.load(str(prepared_path))
        if settings.weight_rounding:
            rounding = round_weights(quantised, fp32, feeds, reduce_range)
            print(f"quantize_int8: {out_path.name}: weights of {rounding.convs} convs re-rounded, output error "
                  f"{rounding.error_ratio:.2f}x round-to-nearest's (median over the convs, calibration inputs)")
        if settings.bias_correction:
            correct_biases(quantised, fp32, feeds)
        onnx.save(quantised, str(tmp))
    if settings.unclipped_fp32:
        quantised, kept = keep_unclipped_fp32(onnx.load(str(tmp)), settings.unclipped_fp32)
        print(f"quantize_int8: {out_path.name}: {len(kept)} unsigned activations under "
              f"{', '.join(settings.unclipped_fp32)} kept FP32, unclipped")
        onnx.save(quantised, str(tmp))
    if settings.float_read_fp32:
        quantised, kept = keep_float_read_fp32(onnx.load(str(tmp)))
        print(f"quantize_int8: {out_path.name}: {len(kept)} activations that no conv reads kept FP32, unclipped")
        onnx.save(quantised, str(tmp))
    check_contract(fp32_path or prepared_path, tmp)
    tmp.replace(out_path)
    return out_path


def io_contract(path: Path) -> dict[str, list]:
    """{"inputs": [(name, element type, dims)], "outputs": [...]}; a symbolic dim is its name."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim])
                for v in values]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def check_contract(fp32_path: Path, int8_path: Path) -> None:
    """Raise when the INT8 graph's inputs / outputs differ from the FP32 graph's in name, type or shape."""
    a, b = io_contract(fp32_path), io_contract(int8_path)
    if a != b:
        raise ValueError(f"{int8_path}: I/O contract {b} differs from the FP32 graph's {a}")


def time_detectors(fp32_path: Path, int8_path: Path, image: np.ndarray, rounds: int = 15,
                   threads: int = 1, int8_runtime: str = "onnxruntime") -> dict:
    """Median detector times, ONNX Runtime FP32 and INT8 (in `int8_runtime`: onnxruntime or openvino) runs
    interleaved (ABAB...) in one process so that the machine's load hits both alike; ratio = INT8 median /
    FP32 median."""
    from maskface.runtimes.ort_runtime import ort_session

    if int8_runtime not in RUNTIME_DEFAULTS:
        raise ValueError(f"int8_runtime {int8_runtime!r} must be one of {', '.join(RUNTIME_DEFAULTS)}")
    if int8_runtime == "openvino":
        from maskface.runtimes.openvino_runtime import OpenVinoGraph, inference_hint

        int8 = OpenVinoGraph(int8_path, inference_hint("int8"), threads, static_shapes=True)  # as served
    else:
        int8 = ort_session(int8_path, threads)
    sessions = {"fp32": ort_session(fp32_path, threads), "int8": int8}
    feed = {"images": np.ascontiguousarray(image, np.float32)}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for session in sessions.values():  # warm-up
        session.run(None, feed)
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in times.items()}
    return {"input_shape": list(image.shape), "threads": threads, "rounds": rounds, "int8_runtime": int8_runtime,
            "fp32_ms": 1e3 * median["fp32"], "int8_ms": 1e3 * median["int8"],
            "ratio_int8_over_fp32": median["int8"] / median["fp32"], "interleaved": True}


def timing_input(record, input_cfg) -> np.ndarray:
    """A val image resized to 640x480 and preprocessed ([1, 3, 512, 640] after padding)."""
    import cv2

    from maskface.data.dataset import read_image
    from maskface.preprocess import prepare_image

    h, w = TIMING_SIZE
    image = cv2.resize(read_image(record.image_path, record.source), (w, h), interpolation=cv2.INTER_AREA)
    return prepare_image(image, input_cfg, max_side=None).image[None]


@dataclass
class Int8Build:
    detector: Path
    keypoint_head: Path
    detector_int8: Path
    keypoint_head_int8: Path | None
    calibration: dict = field(default_factory=dict)


def build_int8(fp32_detector: Path, fp32_keypoints: Path, out_dir: Path, calibration_records: Sequence, model_cfg,
               settings: Int8Settings, keypoint_settings: Int8Settings | None = None, progress: bool = True) -> Int8Build:
    """Calibrate and write detector_int8.onnx (+ keypoint_head_portable_int8.onnx when keypoint_settings)."""
    work = out_dir / "int8_work"
    work.mkdir(parents=True, exist_ok=True)
    images = network_inputs(calibration_records, model_cfg.input, progress=progress)
    detector_feeds = [{"images": x} for x in images]
    prepared, equalisation = calibration_graph(fp32_detector, work, detector_feeds, settings)
    cache = calibrate(prepared, detector_feeds, out_dir / f"calibration_detector_{settings.method}.json",
                      settings, progress=progress)
    detector_int8 = quantize_graph(prepared, out_dir / DETECTOR_INT8_FILE, cache, settings, fp32_detector, detector_feeds)
    keypoint_int8 = None
    info = {"images": len(images), "method": settings.method, "detector_cache": str(cache),
            "equalisation": equalisation}
    if keypoint_settings is not None:
        feeds = keypoint_feeds(fp32_detector, images, model_cfg.inference)
        kp_prepared, info["keypoint_equalisation"] = calibration_graph(fp32_keypoints, work, feeds, keypoint_settings)
        kp_cache = calibrate(kp_prepared, feeds, out_dir / f"calibration_keypoint_{keypoint_settings.method}.json",
                             keypoint_settings, chunk=8, progress=progress)
        keypoint_int8 = quantize_graph(kp_prepared, out_dir / KEYPOINT_INT8_FILE, kp_cache, keypoint_settings,
                                       fp32_keypoints, feeds)
        info.update(keypoint_feeds=len(feeds), keypoint_cache=str(kp_cache))
    shutil.rmtree(work, ignore_errors=True)
    return Int8Build(fp32_detector, fp32_keypoints, detector_int8, keypoint_int8, info)


#: Groups of the sensitivity sweep (node-name prefixes): each is left FP32 in turn.
SWEEP_GROUPS = {
    "stem conv (on the image)": ("/backbone/stages.0/stages.0.0/",),
    "backbone stage 0 (rest)": ("/backbone/stages.0/stages.0.1/", "/backbone/stages.0/stages.0.2/",
                                "/backbone/stages.0/stages.0.3/"),
    "backbone stage 1": ("/backbone/stages.1/",),
    "backbone stage 2": ("/backbone/stages.2/",),
    "backbone stage 3": ("/backbone/stages.3/",),
    "fpn": ("/fpn/",),
    "context, stride 4": ("/context.0/",),
    "context, strides 8-64": ("/context.1/", "/context.2/", "/context.3/", "/context.4/"),
}


def depthwise_convs(graph_path: Path) -> tuple[str, ...]:
    """Names of the grouped (depthwise) convolutions of a graph."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return tuple(n.name for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute))


class _Memo:
    """A pipeline whose outputs are kept per image object: the FP32 reference runs once for the sweep."""

    def __init__(self, pipeline):
        self.pipeline, self.inference, self._outputs = pipeline, pipeline.inference, {}

    def __call__(self, image):
        if id(image) not in self._outputs:
            self._outputs[id(image)] = self.pipeline(image)
        return self._outputs[id(image)]


def sweep(fp32_detector: Path, fp32_keypoints: Path, out_dir: Path, calibration_records: Sequence, val_records: Sequence,
          model_cfg, methods: Sequence[str] = CALIBRATION_METHODS, chosen: str = "minmax", timing_rounds: int = 7,
          progress: bool = True, caches: dict[str, Path] | None = None) -> list[dict]:
    """The measurements behind the module doc's decision, on the given val images: each calibration
    method with the default node set; INT8 instead of UINT8 activations; then, with `chosen`, each
    SWEEP_GROUPS group left FP32, the depthwise convs left FP32, the detection head quantised too, and no
    channel equalisation (export/equalize.py), and no bias correction (export/bias_correction.py; every
    other row has both).
    Per row: drift / recall (precision_compare) and the detector time ratio (interleaved). Detector
    only; the keypoint head stays FP32. `caches` maps a method to a calibration cache already made
    from the same calibration images on the equalised graph (skips that calibration)."""
    from export.precision_compare import compare_paths
    from maskface.data.dataset import read_image
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime

    work = out_dir / "sweep_work"
    work.mkdir(parents=True, exist_ok=True)
    images = network_inputs(calibration_records, model_cfg.input, progress=progress)
    feeds = [{"images": x} for x in images]
    graphs = {eq: calibration_graph(fp32_detector, work, feeds, Int8Settings(equalize=eq))[0] for eq in (False, True)}
    timing_image = timing_input(val_records[0], model_cfg.input)
    val_images = {str(r.image_path): read_image(r.image_path, r.source) for r in val_records}

    def pipeline(detector: Path) -> OnnxPredictor:
        return OnnxPredictor(OrtRuntime(detector, fp32_keypoints), model_cfg.inference, model_cfg.input, max_side=640)

    reference = _Memo(pipeline(fp32_detector))
    caches = {(method, True): path for method, path in (caches or {}).items()}
    variants = [(f"all, {m}", Int8Settings(method=m)) for m in methods]
    variants.append((f"all, {chosen}, no equalisation", Int8Settings(method=chosen, equalize=False)))
    variants.append((f"all, {chosen}, no weight rounding", Int8Settings(method=chosen, weight_rounding=False)))
    variants.append((f"all, {chosen}, no bias correction", Int8Settings(method=chosen, bias_correction=False)))
    variants.append((f"all, {chosen}, S8S8", Int8Settings(method=chosen, activation_type="int8")))
    variants += [(f"all but {g}, {chosen}", Int8Settings(method=chosen, keep_fp32=prefixes))
                 for g, prefixes in SWEEP_GROUPS.items()]
    variants.append((f"all but depthwise convs, {chosen}",
                     Int8Settings(method=chosen, keep_fp32=depthwise_convs(graphs[True]))))
    variants.append((f"all + detection head, {chosen}", Int8Settings(method=chosen,
                                                                    scopes=DETECTOR_SCOPES + ("/detection_head/",))))
    rows = []
    for name, settings in variants:
        key, prepared = (settings.method, settings.equalize), graphs[settings.equalize]
        if key not in caches:
            start = time.perf_counter()
            caches[key] = calibrate(prepared, feeds, work / f"calibration_{settings.method}_{settings.equalize}.json",
                                    settings, progress=progress)
            print(f"quantize_int8: {settings.method} calibration on {len(images)} images took "
                  f"{time.perf_counter() - start:.0f} s")
        path = quantize_graph(prepared, work / "variant.onnx", caches[key], settings, fp32_detector, feeds)
        report = compare_paths(reference, pipeline(path), val_records, model_cfg.inference.score_threshold,
                               names=("fp32", "int8"), progress=progress, read=lambda r: val_images[str(r.image_path)])
        d, p = report["drift"], report["paths"]
        rows.append({"variant": name, "box_p99": d["box_px"]["p99"], "box_max": d["box_px"]["max"],
                     "box_rel_p99": d["box_relative"]["p99"], "landmark_p99": d["landmark_px"]["p99"],
                     "landmark_max": d["landmark_px"]["max"], "score_max": d["score"]["max"], "lost": d["lost"],
                     "added": d["added"], "recall_fp32": p["fp32"]["recall"], "recall_int8": p["int8"]["recall"],
                     "fp_per_image_int8": p["int8"]["fp_per_image"],
                     "time_ratio": time_detectors(fp32_detector, path, timing_image, timing_rounds)["ratio_int8_over_fp32"]})
        print("quantize_int8: sweep " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in rows[-1].items()), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def write_sweep(rows: list[dict], out_dir: Path, images: int) -> Path:
    from maskface.io_utils import atomic_write_bytes, atomic_write_json

    atomic_write_json(out_dir / "sweep.json", {"val_images": images, "rows": rows})
    keys = list(rows[0])
    lines = [f"# INT8 sensitivity sweep ({images} val images; drift in px, original image)", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    path = out_dir / "sweep.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the module doc for what is quantised.")
    p.add_argument("--checkpoint", help="MaskFace checkpoint (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder with train/ and val/ (default: %(default)s)")
    p.add_argument("--out", default="artifacts/onnx_int8", help="output folder (default: %(default)s)")
    p.add_argument("--onnx-dir", help="take detector.onnx + keypoint_head_portable.onnx from here instead of exporting")
    p.add_argument("--calibration-images", type=int, default=32, help="train images to calibrate on (default: %(default)s)")
    p.add_argument("--report-images", type=int, default=100,
                   help="val images of the parity report, the first N (default: %(default)s; 0: no report)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="percentile", help="calibration (default: %(default)s)")
    p.add_argument("--keypoint-head-int8", action="store_true", help="also quantise the keypoint head's convs")
    p.add_argument("--no-equalize", dest="equalize", action="store_false",
                   help="calibrate the graph as exported, without channel equalisation (export/equalize.py)")
    p.add_argument("--no-weight-rounding", dest="weight_rounding", action="store_false",
                   help="keep ORT's round-to-nearest INT8 weights (export/weight_rounding.py)")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="keep the quantised biases as ORT writes them (export/bias_correction.py)")
    p.add_argument("--max-gain", type=float, default=Int8Settings.max_gain,
                   help="equalisation's bound on one channel's gain, >= 1 (default: %(default)s)")
    p.add_argument("--weight-range", choices=WEIGHT_RANGES, default="auto",
                   help="INT8 weights in full (-127..127) or reduced (-64..64, 7 bits) range; auto: reduced on a CPU "
                        "without VNNI, whose U8S8 kernels saturate int16 sums (default: %(default)s)")
    p.add_argument("--runtime", choices=tuple(RUNTIME_DEFAULTS), default="openvino",
                   help="runtime the detector graph is for: openvino (served int8) keeps the activations of "
                        f"{', '.join(DETECTOR_UNCLIPPED_FP32)} and those no conv reads FP32, unclipped; onnxruntime "
                        "keeps every conv on its INT8 kernel (more drift; default: %(default)s)")
    p.add_argument("--unclipped-fp32", default=None, metavar="PREFIXES",
                   help="comma list of tensor-name prefixes whose unsigned detector activations stay FP32, neither "
                        "clipped nor rounded ('' for none; default: the --runtime's, measured on the demo model; "
                        "R50: '' keeps its INT8 speed, docs/DEPLOYMENT.md 5.2)")
    p.add_argument("--timing-rounds", type=int, default=15, help="interleaved detector runs each (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the timing (default: %(default)s)")
    p.add_argument("--sweep", type=int, default=0, metavar="N",
                   help="instead of building: the sensitivity sweep of the module doc on N val images")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        require_split(args.data, "train")
        if args.report_images:
            require_split(args.data, "val")
    except MissingDataError as exc:
        print(f"quantize_int8: {exc}", file=sys.stderr)
        return 2
    from export.export_onnx import DETECTOR_FILE, KEYPOINT_PORTABLE_FILE, export_detector, export_keypoint_head, load_or_init_model
    from maskface.demo.weights import default_checkpoint

    checkpoint = default_checkpoint(args.checkpoint, None)
    model, _ = load_or_init_model(checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.onnx_dir:
        detector, keypoints = Path(args.onnx_dir) / DETECTOR_FILE, Path(args.onnx_dir) / KEYPOINT_PORTABLE_FILE
        for path in (detector, keypoints):
            if not path.is_file():
                print(f"quantize_int8: {path} not found (export it with export/export_onnx.py, or drop --onnx-dir)",
                      file=sys.stderr)
                return 2
        # --out holds the FP32 graphs beside the INT8 ones: the folder the runtimes and precision_report take
        detector, keypoints = (_copy_into(path, out) for path in (detector, keypoints))
    else:
        detector = export_detector(model, out / DETECTOR_FILE)
        keypoints = export_keypoint_head(model, out / KEYPOINT_PORTABLE_FILE, portable=True)
    print(f"quantize_int8: model {checkpoint}; FP32 graphs {detector}, {keypoints}")

    if args.sweep:
        from export.precision_compare import load_val_records

        rows = sweep(detector, keypoints, out, sample_records(args.data, "train", args.calibration_images),
                     load_val_records(args.data, "val", args.sweep), model.cfg, chosen=args.method, progress=progress)
        print(f"quantize_int8: sweep table {write_sweep(rows, out / 'report', args.sweep)}")
        return 0
    reduced = reduced_weight_range(args.weight_range)
    print(f"quantize_int8: weights in {'reduced (-64..64)' if reduced else 'full (-127..127)'} range "
          f"(--weight-range {args.weight_range})")
    unclipped, float_read = RUNTIME_DEFAULTS[args.runtime]
    if args.unclipped_fp32 is not None:
        unclipped = tuple(p for p in args.unclipped_fp32.split(",") if p)
    settings = Int8Settings(method=args.method, equalize=args.equalize, max_gain=args.max_gain,
                            weight_rounding=args.weight_rounding, bias_correction=args.bias_correction,
                            weight_range=args.weight_range, unclipped_fp32=unclipped, float_read_fp32=float_read)
    kp_settings = (Int8Settings(method=args.method, scopes=KEYPOINT_SCOPES, equalize=args.equalize, max_gain=args.max_gain,
                                weight_rounding=args.weight_rounding, bias_correction=args.bias_correction,
                                weight_range=args.weight_range)
                   if args.keypoint_head_int8 else None)
    build = build_int8(detector, keypoints, out, sample_records(args.data, "train", args.calibration_images),
                       model.cfg, settings, kp_settings, progress)
    print(f"quantize_int8: wrote {build.detector_int8}" + (f", {build.keypoint_head_int8}" if build.keypoint_head_int8 else ""))
    if build.calibration["equalisation"]:
        print("quantize_int8: detector channel equalisation " +
              ", ".join(f"{k} {v:.3g}" for k, v in build.calibration["equalisation"].items()))
    if not args.report_images:
        return 0
    report = int8_report(build, model.cfg, args.data, args.report_images, args.timing_rounds, args.threads, progress,
                         args.runtime)
    report["extra"] = {"checkpoint": str(checkpoint), "calibration": build.calibration,
                       "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
                       "reduced_weight_range": reduced, "runtime": args.runtime}
    from export.precision_compare import to_markdown, write_report

    json_path, md_path, _ = write_report(report, out / "report")
    print(to_markdown(report))
    print(f"quantize_int8: report {md_path}")
    return 0


def _copy_into(path: Path, folder: Path) -> Path:
    target = folder / path.name
    if not (target.exists() and target.samefile(path)):
        shutil.copyfile(path, target)
    return target


def int8_report(build: Int8Build, model_cfg, data: str | Path, images: int, timing_rounds: int = 15,
                threads: int = 1, progress: bool = True, runtime: str = "onnxruntime") -> dict:
    """precision_compare of the INT8 pipeline (its detector in `runtime`: onnxruntime or openvino) against
    the FP32 one (ONNX Runtime) on the first `images` val images, plus the interleaved detector timing."""
    from export.precision_compare import compare_paths, load_val_records
    from maskface.runtimes.ort_runtime import OnnxPredictor, OrtRuntime

    records = load_val_records(data, "val", images)

    def pipeline(detector: Path, keypoints: Path) -> OnnxPredictor:
        return OnnxPredictor(OrtRuntime(detector, keypoints), model_cfg.inference, model_cfg.input, max_side=640)

    reference = pipeline(build.detector, build.keypoint_head)
    if runtime == "openvino":
        from maskface.runtimes.openvino_runtime import OpenVinoPredictor, OpenVinoRuntime

        candidate = OpenVinoPredictor(OpenVinoRuntime(build.detector_int8.parent, "int8", threads),
                                      model_cfg.inference, model_cfg.input, max_side=640)
    else:
        candidate = pipeline(build.detector_int8, build.keypoint_head_int8 or build.keypoint_head)
    report = compare_paths(reference, candidate, records, model_cfg.inference.score_threshold,
                           names=("fp32", "int8"), progress=progress)
    report["timing"] = time_detectors(build.detector, build.detector_int8, timing_input(records[0], model_cfg.input),
                                      timing_rounds, threads, runtime)
    return report


if __name__ == "__main__":
    sys.exit(main())
