"""`pip install .` / `pip install -e .` of the repository: the engine `wan_core` plus the console
command `wan22`, usable from any folder, while ComfyUI keeps loading the pack from its folder.

The installs go into a fresh venv in a temporary folder. To avoid downloading torch again, that
venv sees the test interpreter's site-packages through a .pth file (torch, numpy, ... already
there) and pip runs with --no-deps --no-build-isolation (setuptools from the test venv): what is
under test is our metadata and layout, not PyPI. The build runs on a copy of the repository
(test_clone_folder.make_clone) so no build/ or egg-info lands in the checkout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from test_clone_folder import REPO, make_clone

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    for k in ("PYTHONPATH", "WORLD_SIZE", "RANK"):
        env.pop(k, None)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_clone(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-w", out, "."], cwd=source)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("*.whl")
    return whl


def fresh_venv(folder: Path) -> Path:
    """A venv without pip whose site-packages also sees this interpreter's (torch and friends)."""
    p = run([sys.executable, "-m", "venv", "--without-pip", folder], cwd=folder.parent)
    assert p.returncode == 0, p.stderr
    python = folder / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=folder).stdout.strip()
    Path(site, "zz_test_base_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_into(python: Path, *args, cwd: Path) -> None:
    p = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
             "--no-build-isolation", "--disable-pip-version-check", *args], cwd=cwd)
    assert p.returncode == 0, p.stdout + p.stderr


def test_wheel_holds_the_engine_and_the_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    info = [n for n in names if ".dist-info/" in n]
    code = [n for n in names if n not in info]
    assert code and all(n.startswith("wan_core/") for n in code), [n for n in code if not n.startswith("wan_core/")]
    for module in ("wan_core/__init__.py", "wan_core/__main__.py", "wan_core/cli.py",
                   "wan_core/runtime/worker.py", "wan_core/models/dit.py"):
        assert module in code, module
    z = zipfile.ZipFile(wheel)
    entry = z.read(next(n for n in info if n.endswith("entry_points.txt"))).decode()
    assert "wan22 = wan_core.cli:main" in entry
    meta = z.read(next(n for n in info if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Requires-Dist: torch" not in meta
    assert any(n.endswith("licenses/LICENSE") for n in info)


def test_installed_wheel_runs_from_any_folder(wheel, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_into(python, wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import wan_core; print(wan_core.__file__)"], cwd=elsewhere)
    assert where.returncode == 0 and str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
    doctor = run([python, "-m", "wan_core", "doctor"], cwd=elsewhere)
    assert doctor.returncode == 0 and "torch:" in doctor.stdout and "gloo" in doctor.stdout, doctor.stderr
    command = tmp_path / "venv" / "bin" / "wan22"
    assert run([command, "doctor"], cwd=elsewhere).returncode == 0
    # user mistakes through the console command: one line naming the command as typed, exit 2
    bad = run([command, "generate", "--task", "t2v-A14B", "--no_such_flag"], cwd=elsewhere)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --no_such_flag (see `wan22 generate --help`)"]


def test_editable_install_points_at_the_checkout(source, tmp_path):
    python = fresh_venv(tmp_path / "venv")
    pip_into(python, "-e", source, cwd=tmp_path)
    where = run([python, "-c", "import wan_core, wan_core.cli; print(wan_core.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == source / "wan_core" / "__init__.py"
    # only the engine is importable: the pack's `nodes` must never shadow ComfyUI's `nodes` module
    assert run([python, "-c", "import nodes"], cwd=tmp_path).returncode != 0
    help_ = run([tmp_path / "venv" / "bin" / "wan22", "--help"], cwd=tmp_path)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: wan22 ")


def test_pack_uses_its_own_engine_over_an_installed_copy(tmp_path):
    """A `pip install .` into ComfyUI's venv puts a wan_core in site-packages, which would win over
    the pack folder (appended to sys.path). The pack must load its own copy: the nodes and the
    workers (PYTHONPATH = pack root first) then run the same code after a `git pull`."""
    decoy = tmp_path / "site" / "wan_core"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the stale installed copy was imported')\n")
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('wan22pack', {str(REPO / '__init__.py')!r},\n"
            f"    submodule_search_locations=[{str(REPO)!r}])\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['wan22pack'] = m\n"
            "spec.loader.exec_module(m)\n"
            "import wan_core\n"
            "print(wan_core.__file__)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()) == REPO / "wan_core" / "__init__.py"
