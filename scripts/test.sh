#!/usr/bin/env bash
# Runs the whole test suite from .venv (created on first use with the test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
exec .venv/bin/python -m pytest "$@"
