"""`doctor` with a memory plan, the collective self-test, and the memory guard from the CLI.

CPU only (CUDA hidden): doctor must say there is no GPU and still print the plan; the guard on
CPU compares with host RAM (docs/memory.md) and refuses before any worker starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from wan_core import linkcheck


def run_cli(*args: str, timeout: float = 180, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="", **env_extra)
    return subprocess.run([sys.executable, "-m", "wan_core", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=env)


def test_doctor_without_gpu_says_so_and_plans():
    proc = run_cli("doctor", "--task", "t2v-A14B", "--size", "1280*720", "--frame_num", "81",
                   "--gpus", "2", "--dit_fsdp")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    assert "GPUs: none visible: no GPU links, no NCCL self-test" in out
    assert "no CUDA GPU here: the plan is for CUDA GPUs" in out
    assert "plan: estimated peak" in out and "per GPU (t2v-A14B 1280*720, 81 frames, --num_gpus 2 --dit_fsdp" in out
    assert "host RAM:" in out and "/dev/shm for the plan:" in out


def test_doctor_json_is_the_plan():
    from wan_core import memory_plan as mp
    from wan_core.config import Task

    proc = run_cli("doctor", "--json", "--task", "t2v-A14B", "--size", "832*480", "--frame_num", "81",
                   "--gpus", "1", "--offload", "none", "--dtype", "fp8")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["cuda"] is False and info["selftest"] is None
    plan = info["plan"]
    assert plan["layout"]["weight_dtype"] == "fp8" and plan["layout"]["offload"] == "none"
    same = mp.estimate(mp.ModelSizes.official(Task.T2V_A14B), mp.Workload(Task.T2V_A14B, 832, 480, 81),
                       mp.Layout(weight_dtype="fp8"))
    assert plan["alloc_peak"] == same.alloc_peak and plan["gpu_peak"] == same.gpu_peak
    assert plan["fits"] is None                       # nothing to compare with on this machine


def test_doctor_bad_flags_one_line():
    proc = run_cli("doctor", "--json", "--gpus", "3", "--task", "ti2v-5B", "--ulysses_size", "5")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"].startswith("ConfigError: ulysses_size=5")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from wan_core.tinyckpt import write_tiny_t2v

    return write_tiny_t2v(tmp_path_factory.mktemp("ckpt") / "tiny-t2v")


def test_guard_refuses_before_any_worker_starts(tiny_ckpt):
    """4096x4096, 1025 frames on 2 CPU ranks: refused by the memory guard in the CLI's precheck,
    one line with the estimate, before a worker process exists (a group start takes seconds)."""
    t0 = time.monotonic()
    proc = run_cli("generate", "--task", "t2v-A14B", "--ckpt_dir", str(tiny_ckpt), "--device", "cpu",
                   "--size", "4096*4096", "--frame_num", "1025", "--num_gpus", "2", "--sample_steps", "2")
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = errors[0]
    assert line.startswith("error: not enough memory: t2v-A14B 4096*4096, 1025 frames"), line
    assert "of host RAM for all ranks" in line and "GiB" in line and "fewer frames" in line
    assert "worker" not in proc.stderr.lower()
    assert time.monotonic() - t0 < 60


def test_gloo_selftest_and_a_hang():
    ok = linkcheck.selftest(2, "gloo", timeout_s=60, mbytes=4)
    assert ok.ok, ok.message
    assert set(ok.timings) == {"all_reduce", "all_to_all"} and all(t > 0 for t in ok.timings.values())
    t0 = time.monotonic()
    hung = linkcheck.selftest(2, "gloo", timeout_s=10, mbytes=4, _stall_rank=1)   # 10 s: a loaded CI machine
    assert not hung.ok and time.monotonic() - t0 < 25
    assert "hung" in hung.message and "rank 1 never reached the group join" in hung.message
    assert "rank 0 stuck joining the group" in hung.message and "NCCL_P2P_DISABLE=1" in hung.message


def test_topology_matrix_parsed():
    text = ("\x1b[4m        GPU0    GPU1    GPU2    NIC0    CPU Affinity    NUMA Affinity   GPU NUMA ID\x1b[0m\n"
            "GPU0     X      NV18    SYS     PIX     0-47    0               N/A\n"
            "GPU1    NV18     X      PHB     SYS     0-47    0               N/A\n"
            "GPU2    SYS     PHB      X      SYS     0-47    0               N/A\n"
            "NIC0    PIX     SYS     SYS      X\n")
    assert linkcheck.parse_topo(text) == {"0-1": "NV18", "0-2": "SYS", "1-2": "PHB"}
    report = linkcheck.LinkReport(pairs={"0-1": "NV18"})
    assert report.kind == "nvlink"
    assert linkcheck.LinkReport(pairs={"0-1": "NV18", "0-2": "SYS"}).kind == "pcie"
