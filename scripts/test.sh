#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite (unit, parity, distributed, ComfyUI).
# Needs ../shared beside the repo (tiny checkpoints, ComfyUI source). WAN22_REQUIRE_SHARED=1 makes
# a missing ../shared a failure, not a skip (CI relies on this); set it to 0 to skip those tiers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WAN22_REQUIRE_SHARED="${WAN22_REQUIRE_SHARED:-1}"
bash "$ROOT/scripts/setup_env.sh" --test
if [ -x "$ROOT/scripts/comfy_setup.sh" ]; then
  bash "$ROOT/scripts/comfy_setup.sh"
fi
cd "$ROOT"
exec "${WAN_VENV:-$ROOT/.venv}/bin/python" -m pytest -q "$@"
