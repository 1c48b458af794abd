#!/usr/bin/env bash
# Set up (all extras the tests exercise) and run the whole test suite, lint included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "export,hub,eval,ann,milvus,dupes,serve,classify,train,dev"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
