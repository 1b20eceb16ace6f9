#!/usr/bin/env bash
# One command for a lent GPU machine (torch with CUDA, nvcc, no TensorRT, no internet); < 8 minutes:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default: $OUT, else runs/gpu_check
#
#   1. multi-level RoIAlign: builds the CUDA kernel for this GPU, compares it with torchvision.ops.roi_align
#      on CUDA (FP32 / FP16, sampling ratios 0, 1, 2), checks Eq. 6 levels on the device, times 1/16/128 ROIs
#      -> plugin_check.json, plugin_check.md, plugin_check.log
#      (if TensorRT headers are found - $MASKFACE_THIRD_PARTY or ../shared/third_party - it also runs the
#      IPluginV3 self-test with --gpu)
#   2. PyTorch latency table (Table 7): see the LEAD block below.
#
# On a machine without a GPU it still runs, in "build + CPU only" mode (it says so), so it can be smoke-tested.
# Runs on the GPU machine's own Python (3.12, torch 2.11, numpy 2.x, onnx, CPU onnxruntime; no venv, no
# tritonserver, no TensorRT, no OpenCV): it imports nothing beyond torch / torchvision / numpy / onnxruntime and
# installs nothing (tests/benchmarks/test_gpu_check.py runs it with our venv-only packages hidden).
# Files land flat in OUT_DIR (the device tool returns at most 8 files).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONUNBUFFERED=1
status=0

echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); python: $PY; out: $OUT_DIR"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "== no GPU visible (nvidia-smi absent or failing): BUILD + CPU-ONLY MODE, GPU checks will be skipped"
fi

# ---- 1. multi-level RoIAlign kernel vs torchvision on CUDA (+ timings) -------------------------------------
timeout 300 "$PY" benchmarks/plugin_check.py --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/plugin_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "== plugin_check FAILED (exit $rc)"; status=1; }

# ---- 2. LEAD: PyTorch latency table (benchmarks/latency.py) goes HERE ----------------------------------------
# Budget: the whole script must end within 8 minutes; plugin_check takes ~1 minute on an H100, so latency.py
# gets at most 270 s (R50 + RX152 at 640x480, 30 timed runs after 5 warm-up runs each: ~1-2 minutes on an H100).
# Rows: torch-fp32, torch-fp16 (channels-last), torch-fp16-cudagraph (detector trunk as a CUDA graph); TensorRT
# FP16 where TensorRT with a builder is importable (else the JSON/markdown say why it was skipped).
# Writes latency.json, latency.md, latency.png, latency.log flat in OUT_DIR; the ONNX/engine cache stays outside.
BENCH_CACHE="${BENCH_CACHE:-${TMPDIR:-/tmp}/maskface_bench_cache}"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  timeout 270 "$PY" benchmarks/latency.py --device cuda --backbones r50,rx152 --sizes 640x480 \
    --backends torch-fp32,torch-fp16,torch-fp16-cudagraph,tensorrt-fp16 --runs 30 --warmup 5 --faces 1,4,16,64 \
    --out "$OUT_DIR" --cache-dir "$BENCH_CACHE" --no-progress 2>&1 | tee "$OUT_DIR/latency.log"
else
  echo "== latency: no CUDA device for torch: CPU smoke run only (mbv2, 128x128, 1 run), NOT the GPU table"
  timeout 270 "$PY" benchmarks/latency.py --device cpu --backbones mbv2 --sizes 128x128 --backends torch-fp32 \
    --runs 1 --warmup 0 --faces 1 --out "$OUT_DIR" --cache-dir "$BENCH_CACHE" --no-progress 2>&1 | tee "$OUT_DIR/latency.log"
fi
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "== latency FAILED (exit $rc)"; status=1; }
# ---- end of LEAD block ---------------------------------------------------------------------------------------

echo "== gpu_check finished with status $status; files in $OUT_DIR:"
ls -la "$OUT_DIR"
exit "$status"
