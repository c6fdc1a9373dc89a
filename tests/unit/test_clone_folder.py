"""The suite passes in a clone named as the README says (`comfyui-wan22-multigpu`), not only in a
folder whose name happens to be a Python identifier.

Why it can fail: the repository root holds the pack's `__init__.py`, so pytest collects the root as
a package and imports that file; with a hyphenated folder name it becomes a top-level module with no
parent package, and its relative imports used to turn all 426 tests into collection errors. CI's
checkout folder (`main`) never showed it.

The clone is the repository's file set (`git ls-files`: tracked plus untracked-not-ignored, so
uncommitted work is tested too), copied into `<tmp>/comfyui-wan22-multigpu`; a fast part of the suite
runs there with the README's pytest invocation. About 5 s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLONE_NAME = "comfyui-wan22-multigpu"


def _repo_files() -> list[str]:
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]
    # an export without .git (a tarball): everything except caches and virtual environments
    skip = {".git", ".venv", ".comfy", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)]


def make_clone(parent: Path) -> Path:
    dst = parent / CLONE_NAME
    for rel in _repo_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dst


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return make_clone(tmp_path_factory.mktemp("clone"))


def test_suite_runs_in_a_clone_named_like_the_readme(clone):
    assert (clone / "__init__.py").is_file() and (clone / "tests" / "unit" / "test_config.py").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_config.py"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert " passed" in out and "error" not in out.lower(), out[-3000:]
    # the tests ran from the clone, not from this checkout
    assert str(REPO) not in out


def test_root_init_imports_as_a_plain_module(clone, tmp_path):
    """What pytest does in such a folder: the root __init__.py imported with no parent package."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('__init__', {str(clone / '__init__.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(sorted(m.__all__), callable(m.comfy_entrypoint))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "['WEB_DIRECTORY', 'comfy_entrypoint'] True" in proc.stdout
