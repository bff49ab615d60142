#!/usr/bin/env bash
# Runs vlmserve from .venv (created on first use). With no arguments: a demo request to the tiny
# random-weight model with the bundled image. Otherwise the arguments go to the `vlmserve` command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ $# -eq 0 ]; then
  set -- generate --prompt "Describe this image." --image assets/demo.png --max-tokens 24
fi
exec .venv/bin/vlmserve "$@"
