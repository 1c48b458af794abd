#!/usr/bin/env bash
# Make .venv and install lookalike into it, with the extras named in $1 (default: export).
# torch is pinned to 2.13.0, the CPU build that lies on this machine's disk: an unpinned torch
# pulls a multi-GB CUDA build. It is only needed once, to export the bundled models to ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export}"
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
