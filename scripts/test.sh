#!/usr/bin/env bash
# One command for the tests: install everything, lint, type-check, run pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m slow` for the real-model lane).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
ruff check src tests bench scripts
ruff format --check src tests bench scripts
mypy
python -m pytest "$@"
