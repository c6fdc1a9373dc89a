#!/usr/bin/env bash
# One command from a fresh clone to a real mp4: sets up .venv and runs the demo on an embedded tiny
# model (CPU, or the GPUs present).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${WAN_VENV:-$ROOT/.venv}/bin/python" -m wan_core demo "$@"
