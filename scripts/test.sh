#!/usr/bin/env bash
# README command (b): set up, then run the whole test suite (unit, node and real-server tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
exec "$ROOT/.venv/bin/python" -m pytest "$@"
