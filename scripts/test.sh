#!/usr/bin/env bash
# The project's test command: sets up .venv if needed, then runs the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# TensorRT's headers, Python-binding sources and the ONNX parser's operator matrix (reference files, never
# copied into the repository): CI has a copy of shared/ beside the clone.
export MASKFACE_THIRD_PARTY="${MASKFACE_THIRD_PARTY:-$(cd .. && pwd)/shared/third_party}"
exec .venv/bin/python -m pytest "$@"
