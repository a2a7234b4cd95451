#!/usr/bin/env bash
# Create .venv (once) with CPU torch first, then innerpissa and its test/ray extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import innerpissa, pytest" 2>/dev/null; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[test,ray]"
fi
