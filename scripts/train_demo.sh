#!/usr/bin/env bash
# The demo model's whole recipe (maskface/demo/MODEL_CARD.md): data from pip packages, then training.
# Resumable: run it again after a stop and it continues bit-exactly from OUT/last.pth.
#   bash scripts/train_demo.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-runs/demo-data}
RUN=${2:-runs/demo}
PY=${PYTHON:-.venv/bin/python}
if [ ! -f "$DATA/val/label.txt" ]; then
  "$PY" -m maskface.cli demo-data --out "$DATA" --seed 0
fi
exec "$PY" -m maskface.cli train --config demo --data "widerface:$DATA" \
  --backbone-weights "$DATA/centerface_mobilenet_v2.pth" --output "$RUN" \
  --crop-size 384 --scale-range 0.5 1.5 --batch-size 8 --max-iter 3000 --lr-steps 2100 2600 --lr 0.01 \
  --warmup-iters 300 --eval-period 400 --patience 2 --val-max-images 80 --val-max-side 640 \
  --checkpoint-period 50 --log-period 10 --workers 1 --seed 0 --channels-last
