#!/usr/bin/env bash
# Installs a real ComfyUI (CPU) for the tests in tests/comfy, into a cache folder:
#   $WAN22_COMFY_CACHE (default <repo>/.comfy)/ComfyUI   the source, from ../shared/comfyui/ComfyUI-v0.33.0.tar.gz
#   $WAN22_COMFY_CACHE/venv                             its Python: torch CPU, ComfyUI's requirements, this
#                                                       pack's requirements.txt (what a user's ComfyUI has)
# and Debian's chromium (the headless browser of the frontend tests; Playwright never downloads one).
# Idempotent: a second run checks and returns in seconds. FORCE=1 rebuilds.
# Env: COMFYUI_DIR=<checkout>  use that ComfyUI instead of extracting the tarball (its venv is still ours)
#      COMFYUI_TARBALL=<file>  another tarball (one top folder inside)
#      SKIP_BROWSER=1          no chromium
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${WAN22_COMFY_CACHE:-$ROOT/.comfy}"
VENV="$CACHE/venv"
PY="${PYTHON:-python3}"
TORCH_VERSION="${WAN_TORCH_VERSION:-2.13.0}"
# torchvision minor = torch minor + 15. PyPI has CUDA builds only: installed --no-deps, plus the shim.
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"
# No torchaudio release matches torch 2.13; 2.11.0 without its C++ library runs in pure-Python mode.
TORCHAUDIO_VERSION="${TORCHAUDIO_VERSION:-2.11.0}"
T0=$(date +%s)
log() { echo "[comfy_setup $(( $(date +%s) - T0 ))s] $*"; }
quiet() { grep -v -E "is ignored: it is neither a file nor a directory|^\s*$" || true; }
mkdir -p "$CACHE"

# ------------------------------------------------------------------ 1. ComfyUI source
if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY="$(cd "$COMFYUI_DIR" && pwd)"
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_DIR=$COMFYUI_DIR has no main.py" >&2; exit 1; }
  log "using the ComfyUI checkout $COMFY"
else
  COMFY="$CACHE/ComfyUI"
  TARBALL="${COMFYUI_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-v0.33.0.tar.gz}"
  [ -f "$TARBALL" ] || { echo "no ComfyUI tarball at $TARBALL (set COMFYUI_TARBALL or COMFYUI_DIR)" >&2; exit 1; }
  STAMP="$(sha256sum "$TARBALL" | cut -c1-16)"
  if [ "${FORCE:-0}" = 1 ] || [ "$(cat "$COMFY/.wan22_stamp" 2>/dev/null)" != "$STAMP" ]; then
    log "extracting $TARBALL -> $COMFY"
    rm -rf "$COMFY"; mkdir -p "$COMFY"
    tar -xzf "$TARBALL" -C "$COMFY" --strip-components=1
    echo "$STAMP" > "$COMFY/.wan22_stamp"
  fi
fi
log "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null) at $COMFY"

# ------------------------------------------------------------------ 2. venv: torch (CPU) + ComfyUI requirements
[ "${FORCE:-0}" = 1 ] && rm -rf "$VENV"
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
REQ_STAMP="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" | sha256sum | cut -c1-16)-$TORCH_VERSION"
if [ "$(cat "$VENV/.wan22_stamp" 2>/dev/null)" = "$REQ_STAMP" ] && "$VENV/bin/python" -c "import torch, torchvision, aiohttp" 2>/dev/null; then
  log "venv up to date ($VENV)"
else
  if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION (CPU)"
    "${PIP[@]}" install "torch==$TORCH_VERSION" 2>&1 | quiet
  fi
  CONSTRAINTS="$CACHE/constraints.txt"
  echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
  # torch/torchvision/torchaudio are handled here; spandrel would pull torchvision's CUDA deps.
  grep -v -E '^\s*(torch|torchvision|torchaudio|spandrel)\s*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$CACHE/requirements.cpu.txt"
  log "installing ComfyUI's requirements (PyPI; about a minute on a fresh machine)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -r "$CACHE/requirements.cpu.txt" 2>&1 | quiet
  "${PIP[@]}" install --no-deps spandrel 2>&1 | quiet
  SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  log "installing torchvision==$TORCHVISION_VERSION --no-deps + import shim, torchaudio==$TORCHAUDIO_VERSION (pure Python)"
  "${PIP[@]}" install --no-deps "torchvision==$TORCHVISION_VERSION" 2>&1 | quiet
  cp "$ROOT/scripts/comfy_torchvision_shim.py" "$SP/wan22_tv_shim.py"
  echo "import wan22_tv_shim" > "$SP/zz_wan22_tv_shim.pth"
  "${PIP[@]}" install --no-deps "torchaudio==$TORCHAUDIO_VERSION" 2>&1 | quiet
  rm -f "$SP"/torchaudio/lib/*.so
  log "installing this pack's requirements.txt (as ComfyUI-Manager would)"
  "${PIP[@]}" install -c "$CONSTRAINTS" -r "$ROOT/requirements.txt" 2>&1 | quiet
  "$VENV/bin/python" - <<EOF
import importlib.metadata as md
import torch, torchvision, torchaudio  # noqa: F401
bad = [d.metadata["Name"] for d in md.distributions()
       if d.metadata["Name"].lower().startswith(("nvidia-", "cuda-", "triton"))]
if not torch.__version__.startswith("$TORCH_VERSION"):
    raise SystemExit(f"torch {torch.__version__} in the ComfyUI venv, wanted $TORCH_VERSION")
if bad:
    raise SystemExit(f"CUDA wheels were pulled into the ComfyUI venv: {bad}")
EOF
  echo "$REQ_STAMP" > "$VENV/.wan22_stamp"
fi

# ------------------------------------------------------------------ 3. browser for the frontend tests
if [ "${SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian chromium"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation >/dev/null
  else
    log "WARNING: /usr/bin/chromium is missing and this is not root: the frontend tests will fail"
  fi
fi
log "done: COMFYUI_DIR=$COMFY COMFYUI_PYTHON=$VENV/bin/python"
