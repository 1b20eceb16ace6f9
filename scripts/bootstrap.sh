#!/usr/bin/env bash
# Creates .venv in the repository root (if missing) and installs maskface with every CPU extra
# (export, serving, test). Idempotent: it reinstalls only when setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.maskface-installed
want=$(sha256sum setup.py | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
  # torch first and alone: pinned releases that are local files on our machines (docs/ARCHITECTURE.md §6).
  .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  # The TensorRT 10 lean runtime for the plugin built against the 10.16 headers (tests/plugins): a folder
  # of its own, since one Python cannot import two tensorrt_lean versions.
  rm -rf .venv/tensorrt-lean-10.16
  .venv/bin/python -m pip install --quiet --target .venv/tensorrt-lean-10.16 tensorrt-lean==10.16.1.11
  echo "$want" > "$stamp"
  echo "bootstrap: installed maskface into .venv"
fi
