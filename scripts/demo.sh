#!/usr/bin/env bash
# README command (a): set up, then run the shipped plug-and-play video-edit workflow in a real
# headless ComfyUI on tiny demo models; the edited video and frames land in demo_output/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/run_demo.py" "$@"
