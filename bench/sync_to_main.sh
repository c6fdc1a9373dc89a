#!/usr/bin/env bash
# The device tool sends the session's checkout (/work/main), not a helper's worktree: copy this
# worktree's code into /work/main/outputs/speed (git-ignored there) and name that folder in `carry`.
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DST=/work/main/outputs/speed
mkdir -p "$DST"
rm -rf "$DST" && mkdir -p "$DST"
tar -C "$SRC" --exclude=.git --exclude=__pycache__ --exclude=.pytest_cache --exclude=outputs --exclude=.whl --exclude=.fa4 -cf - . | tar -C "$DST" -xf -
du -sh "$DST"
