#!/usr/bin/env bash
# Creates .venv (if needed) with the CPU build of torch and the pack's requirements.
# torch is not in requirements.txt (ComfyUI provides it; ComfyUI-Manager refuses it), so it is
# installed here explicitly. On a GPU machine with torch already in the venv nothing is replaced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WAN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q "torch==${WAN_TORCH_VERSION:-2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt"
if [ "${1:-}" = "--test" ]; then
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements-test.txt"
fi
