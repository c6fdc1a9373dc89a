"""Shared fixtures. The tiny checkpoints and goldens live in ../shared/wan22_tiny (or $WAN22_TINY).

Rule (DESIGN.md §4): when the folder is missing the parity tests skip with a reason, except when
WAN22_REQUIRE_SHARED=1 (set by CI): then they fail, so CI can never pass by skipping.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def missing(reason: str) -> NoReturn:
    """Skip with the reason, except under WAN22_REQUIRE_SHARED=1 (CI): then fail (DESIGN.md §4)."""
    if os.environ.get("WAN22_REQUIRE_SHARED") == "1":
        pytest.fail(reason + "; WAN22_REQUIRE_SHARED=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def _shared_dir(env: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(env, str(default)))
    if not path.is_dir():
        missing(f"{what} not found at {path} (set ${env})")
    return path


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    """Root of wan22_tiny (ckpt/, golden/, inputs/)."""
    return _shared_dir("WAN22_TINY", REPO.parent / "shared" / "wan22_tiny", "tiny checkpoints")


@pytest.fixture(scope="session")
def golden(tiny_dir):
    """golden('t2v') -> dict of tensors from golden/t2v.safetensors."""
    from safetensors.torch import load_file

    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = load_file(str(tiny_dir / "golden" / f"{name}.safetensors"))
        return cache[name]

    return load


def rel_err(actual, expected) -> float:
    """max|a - e| / max|e|: the error measure of the goldens' README (elementwise relative error is
    meaningless near zero)."""
    a = actual.double()
    e = expected.double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))
