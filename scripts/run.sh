#!/usr/bin/env bash
# Runs vlmserve from .venv (created on first use). With no arguments: the OpenAI-compatible server on
# http://127.0.0.1:8000 with the tiny random-weight demo model. Otherwise the arguments go to `vlmserve`:
# a command (`eval ...`), or serve's options alone (`--port 8001`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ $# -eq 0 ]; then
  set -- serve
fi
exec .venv/bin/vlmserve "$@"
