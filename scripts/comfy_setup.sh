#!/usr/bin/env bash
# Installs a real ComfyUI (CPU) for the tests in tests/comfy, into a cache folder:
#   $WAN22_COMFY_CACHE (default <repo>/.comfy)/ComfyUI   the source, from ../shared/comfyui/ComfyUI-v0.33.0.tar.gz
#   $WAN22_COMFY_CACHE/venv                             its Python: torch CPU, ComfyUI's requirements, this
#                                                       pack's requirements.txt (what a user's ComfyUI has)
# torch (~750 MB unpacked) is not installed a second time when the project's venv ($WAN_VENV, default
# <repo>/.venv, made by setup_env.sh) has the same version for the same Python: a folder of links to
# it goes on the ComfyUI venv's path (a .pth file), and pip installs only torch's small dependencies.
# It sits outside that venv's site-packages, so pip there can never uninstall or overwrite it.
# and Debian's chromium (the headless browser of the frontend tests; Playwright never downloads one).
# Idempotent: a second run checks and returns in seconds. FORCE=1 rebuilds.
# Env: COMFYUI_DIR=<checkout>  use that ComfyUI instead of extracting the tarball (its venv is still ours)
#      COMFYUI_TARBALL=<file>  another tarball (one top folder inside)
#      SKIP_BROWSER=1          no chromium
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${WAN22_COMFY_CACHE:-$ROOT/.comfy}"
VENV="$CACHE/venv"
MAIN_VENV="${WAN_VENV:-$ROOT/.venv}"
# The same interpreter as the project's venv (when there is one), so its torch can be shared.
if [ -z "${PYTHON:-}" ] && [ -x "$MAIN_VENV/bin/python" ]; then PY="$MAIN_VENV/bin/python"; else PY="${PYTHON:-python3}"; fi
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
link_main_torch() {   # 0 when the project venv's torch is now on the ComfyUI venv's path
  [ -x "$MAIN_VENV/bin/python" ] || return 1
  "$MAIN_VENV/bin/python" - "$VENV/bin/python" "$CACHE/torch_from_main_venv" "$TORCH_VERSION" <<'EOF'
import importlib.metadata as md
import os
import shutil
import subprocess
import sys

target_python, links, wanted = sys.argv[1:4]
try:
    dist = md.distribution("torch")
except md.PackageNotFoundError:
    sys.exit(1)
probe = "import sys, sysconfig; print(sys.version_info[:2], sysconfig.get_paths()['purelib'])"
out = subprocess.run([target_python, "-c", probe], capture_output=True, text=True, check=True).stdout
version, target_site = out.strip().split(") ", 1)
if not dist.version.startswith(wanted) or version + ")" != str(sys.version_info[:2]):
    sys.exit(1)                       # another torch, or built for another Python: install instead
site = str(dist.locate_file(""))
tops = sorted({f.parts[0] for f in dist.files if f.parts[0] != ".."})   # torch, torchgen, functorch, dist-info
shutil.rmtree(links, ignore_errors=True)
os.makedirs(links)
for name in tops:
    os.symlink(os.path.join(site, name), os.path.join(links, name))
with open(os.path.join(target_site, "wan22_shared_torch.pth"), "w") as f:
    f.write(links + "\n")
EOF
}
[ "${FORCE:-0}" = 1 ] && rm -rf "$VENV"
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
REQ_STAMP="$(cat "$COMFY/requirements.txt" "$ROOT/requirements.txt" | sha256sum | cut -c1-16)-$TORCH_VERSION"
if [ "$(cat "$VENV/.wan22_stamp" 2>/dev/null)" = "$REQ_STAMP" ] && "$VENV/bin/python" -c "import torch, torchvision, aiohttp" 2>/dev/null; then
  log "venv up to date ($VENV)"
else
  if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
    if link_main_torch; then
      log "torch $TORCH_VERSION: shared from $MAIN_VENV (links in $CACHE/torch_from_main_venv); installing its dependencies"
    else
      log "installing torch==$TORCH_VERSION (CPU)"
    fi
    "${PIP[@]}" install "torch==$TORCH_VERSION" 2>&1 | quiet   # with a shared torch: only its dependencies
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
