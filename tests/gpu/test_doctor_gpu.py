"""`python -m wan_core doctor` on a GPU machine (marked gpu; run on the device machine:
`pytest -m gpu tests/gpu/test_doctor_gpu.py`): every visible GPU is listed with its name and total
memory, NCCL is found, and `auto` names the backend the engine resolves on CUDA."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(120)]


def test_doctor_lists_the_gpus():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from wan_core.models.attention import resolve_backend

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "wan_core", "doctor"], capture_output=True,
                          text=True, timeout=100, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    count = torch.cuda.device_count()
    assert f"CUDA available: yes, {count} GPU(s)" in out
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        assert f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 1024 ** 3:.1f} GiB" in out
    assert "NCCL (GPU ranks): yes" in out
    assert f"attention auto: picks {resolve_backend('auto', 'cuda').name} on cuda" in out
