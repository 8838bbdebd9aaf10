#!/usr/bin/env bash
# One command for a newcomer: install everything, then run `sway demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
sway demo "$@"
