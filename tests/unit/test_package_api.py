"""`import wan_core` stays light (no torch, no pipeline) and `wan_core.WanEngine` loads on demand.

Each check runs in a fresh interpreter: this test process has long imported torch and the engine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO), env=env)


def test_import_is_light_and_wan_engine_is_lazy():
    proc = _run("""
        import sys
        import wan_core
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "wan_core.")))
        assert heavy == ["wan_core.config", "wan_core.errors"], heavy
        assert "WanEngine" in wan_core.__all__ and "WanEngine" in dir(wan_core)
        engine_cls = wan_core.WanEngine
        from wan_core.pipeline.engine import WanEngine
        assert engine_cls is WanEngine and "torch" in sys.modules
        assert wan_core.WanEngine is WanEngine
        try:
            wan_core.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise SystemExit("wan_core.NoSuchThing did not raise AttributeError")
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_from_import_of_wan_engine():
    proc = _run("""
        from wan_core import WanEngine, EngineSpec
        assert WanEngine.__module__ == "wan_core.pipeline.engine"
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
