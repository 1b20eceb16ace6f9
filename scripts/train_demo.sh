#!/usr/bin/env bash
# The demo model's whole recipe (maskface/demo/MODEL_CARD.md): data from pip packages, then two
# training stages. Resumable: run it again after a stop and each stage continues bit-exactly from
# its last.pth (a finished stage is skipped).
#   1. detector: the whole model (its first keypoint head 4 x 64) on CenterFace's labels -> RUN/
#   2. keypoints: a new 8 x 64 keypoint head on stage 1's frozen model, trained alone on consensus
#      landmarks (CenterFace + RetinaFace, each flip-averaged) -> RUN-keypoints/model_final.pth,
#      the demo model. Boxes are stage 1's, bit for bit.
#   bash scripts/train_demo.sh [DATA_DIR] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-runs/demo-data}
RUN=${2:-runs/demo}
PY=${PYTHON:-.venv/bin/python}
if [ ! -f "$DATA/val/label.txt" ]; then
  "$PY" -m maskface.cli demo-data --out "$DATA" --seed 0
fi
if [ ! -f "$RUN/model_final.pth" ]; then
  "$PY" -m maskface.cli train --config demo --data "widerface:$DATA" \
    --backbone-weights "$DATA/centerface_mobilenet_v2.pth" --output "$RUN" --set keypoints.num_convs=4 \
    --crop-size 384 --scale-range 0.5 1.5 --batch-size 8 --max-iter 3000 --lr-steps 2100 2600 --lr 0.01 \
    --warmup-iters 300 --eval-period 400 --patience 2 --val-max-images 80 --val-max-side 640 \
    --checkpoint-period 50 --log-period 10 --workers 1 --seed 0 --channels-last
fi
CONSENSUS=$DATA-consensus
if [ ! -f "$CONSENSUS/val/label.txt" ]; then
  "$PY" -m maskface.cli demo-data --out "$CONSENSUS" --seed 0 --flip-average-landmarks \
    --landmark-teachers centerface+retinaface
fi
exec "$PY" -m maskface.cli train --config demo --data "widerface:$CONSENSUS" --output "$RUN-keypoints" \
  --init-weights "$RUN/model_final.pth" --init-exclude keypoint_head --train-only keypoint_head \
  --set keypoints.num_convs=8 --val-metric nme \
  --crop-size 384 --scale-range 0.5 1.5 --batch-size 8 --max-iter 3000 --lr-steps 2100 2700 --lr 0.01 \
  --warmup-iters 100 --eval-period 300 --patience 3 --val-max-images 80 --val-max-side 640 \
  --checkpoint-period 50 --log-period 10 --workers 1 --seed 0 --channels-last
