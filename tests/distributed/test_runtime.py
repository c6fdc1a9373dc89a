"""The persistent worker group on CPU (gloo ranks), with the tiny T2V checkpoint.

Covers: 2 ranks == 1 rank in-process, cancel then reuse, a worker killed
mid-run, a broken checkpoint at start, two groups at once, the client killed, torchrun.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from conftest import REPO, rel_err
from wan_core import EngineSpec, GenerateRequest, ParallelConfig, ParamDtype, Task
from wan_core.client import EngineClient
from wan_core.errors import Cancelled, WorkerFailure
from wan_core.runtime.processes import sweep_stale_groups

TASK = "t2v-A14B"
REQUEST = GenerateRequest(prompt="a red fox running through snow", size=(64, 48), frame_num=5,
                          steps=3, seed=7)
# fp32 everywhere. 2 ranks run Ulysses: attention per head is the same math, but the token split
# changes GEMM row counts, which may change BLAS blocking and summation order. Measured rel_err 0.0
# (torch 2.13 CPU); the bound allows ~100 fp32 ulps of accumulated reordering over 3 steps.
TOL = 1e-5


def _spec(ckpt: Path, num_gpus: int = 1) -> EngineSpec:
    return EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(ckpt), device="cpu",
                      param_dtype=ParamDtype.FP32,
                      parallel=ParallelConfig(num_gpus=num_gpus, ulysses_size=num_gpus))


def _stat(pid: int):
    """(state, pgrp, session) of a process, or None when it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[2]), int(fields[3])


def _leftovers(pids) -> list[int]:
    """Live processes among `pids` or in their sessions (workers are session leaders, so this
    also finds any grandchildren); zombies do not count."""
    pids = set(pids)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[0] != "Z" and (int(entry) in pids or st[2] in pids):
                found.append(int(entry))
    return found


def _wait_gone(pids, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while _leftovers(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _leftovers(pids)


class KillAtDenoise:
    """An `on_progress` callback that SIGKILLs `pid` at the first denoise event; `killed_at` is when
    (time.monotonic), to time how fast the death is reported."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.killed_at: float | None = None

    def __call__(self, event) -> None:
        if event.phase == "denoise" and self.killed_at is None:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()


def _worker_children() -> set[int]:
    """Live worker processes started by this process (other test runs on the machine have their own)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if st and st[0] != "Z" and b"wan_core.runtime.worker" in cmd and ppid == os.getpid():
            out.add(int(entry))
    return out


def _kill_all(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def t2v_ckpt(tiny_dir, tmp_path_factory) -> Path:
    from tests.parity._tiny import task_ckpt

    return task_ckpt(tiny_dir, TASK, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def reference(t2v_ckpt):
    """The 1-rank in-process result (no worker group)."""
    from wan_core.pipeline.engine import WanEngine

    engine = WanEngine(_spec(t2v_ckpt, 1))
    result = engine.generate(REQUEST)
    engine.close()
    return result


@pytest.fixture(scope="module")
def group2(t2v_ckpt):
    loading = []
    client = EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120, on_progress=loading.append)
    assert [e.phase for e in loading] == ["load"] * 4 and loading[-1].step == loading[-1].total
    yield client
    pids = client.pids
    client.close()
    assert _wait_gone(pids, 5) == []


def _assert_matches(result, reference, exact: bool = False) -> None:
    assert result.latent.shape == reference.latent.shape == (16, 2, 6, 8)
    assert result.video.shape == reference.video.shape == (5, 48, 64, 3)
    assert result.seed == reference.seed
    if exact:
        assert torch.equal(result.latent, reference.latent)
        assert torch.equal(result.video, reference.video)
    else:
        assert rel_err(result.latent, reference.latent) <= TOL
        # uint8 video: a latent difference of 1e-5 can flip a rounding, never more than one level.
        assert (result.video.int() - reference.video.int()).abs().max() <= 1


@pytest.mark.timeout(180)
def test_two_ranks_match_one_rank_in_process(group2, reference):
    assert group2.alive and len(group2.workers) == 2
    assert [w.rank for w in group2.workers] == [0, 1] and group2.workers[0].device == "cpu"
    events = []
    result = group2.generate(REQUEST, on_progress=events.append)
    _assert_matches(result, reference)
    denoise = [e.step for e in events if e.phase == "denoise"]
    assert denoise[-3:] == [1, 2, 3] and events[-1].phase == "decode"


@pytest.mark.timeout(180)
def test_latent_previews_come_from_rank_0(group2, reference):
    """Issue 5: with preview=True each denoise step's event carries rank 0's latent preview (a
    uint8 [h, w, 3] tensor, pickled inline), and the result is the one without previews."""
    events = []
    result = group2.generate(REQUEST, on_progress=events.append, preview=True)
    previews = [(e.step, e.preview) for e in events if e.preview is not None]
    assert [step for step, _ in previews] == [1, 2, 3]
    assert all(p.dtype == torch.uint8 and p.shape == (6, 8, 3) for _, p in previews)
    _assert_matches(result, group2.generate(REQUEST), exact=True)


@pytest.mark.timeout(180)
def test_cancel_mid_run_then_next_request_succeeds(group2, reference):
    steps = 20   # far more than the cancel needs: the stop must land inside the loop
    flag = threading.Event()

    def on_progress(e):
        if e.phase == "denoise" and e.step == 1:
            flag.set()

    t0 = time.monotonic()
    with pytest.raises(Cancelled) as info:
        group2.generate(GenerateRequest(**{**REQUEST.__dict__, "steps": steps}),
                        on_progress=on_progress, should_cancel=flag.is_set)
    assert info.value.step is not None and 1 <= info.value.step < steps
    assert group2.alive

    # client.cancel() from another thread, and an exception raised by on_progress (ComfyUI's
    # interrupt is raised from its progress hook): both stop the run, the group survives.
    class Interrupted(BaseException):
        pass

    def raising(e):
        if e.phase == "denoise":
            raise Interrupted()

    with pytest.raises(Interrupted):
        group2.generate(GenerateRequest(**{**REQUEST.__dict__, "steps": steps}), on_progress=raising)
    timer = threading.Timer(0.5, group2.cancel)
    timer.start()
    with pytest.raises(Cancelled):
        group2.generate(GenerateRequest(**{**REQUEST.__dict__, "steps": 50}))
    timer.join()
    assert time.monotonic() - t0 < 60

    _assert_matches(group2.generate(REQUEST), reference)


@pytest.mark.timeout(120)
def test_user_error_on_every_rank_keeps_the_group(group2, reference):
    with pytest.raises(WorkerFailure) as info:
        group2.generate(GenerateRequest(**{**REQUEST.__dict__, "frame_num": 6}))
    f = info.value
    assert f.rank == 0 and f.exc_type == "ConfigError" and f.user_error and "frame_num=6" in f.message
    assert "Traceback" in f.traceback
    assert group2.alive


@pytest.mark.timeout(60)
def test_status_reports_each_rank(group2):
    st = group2.status()
    assert st.alive and not st.busy and [r.rank for r in st.ranks] == [0, 1]
    assert {r.pid for r in st.ranks} == set(group2.pids)
    assert all(r.phase == "idle" and r.memory["rss_bytes"] > 0 for r in st.ranks)
    assert st.as_dict()["ranks"][1]["rank"] == 1


@pytest.mark.timeout(180)
def test_two_groups_at_once(group2, t2v_ckpt, reference):
    """A second group beside the first: its own store port, socket and processes; both run at the
    same time. One rank in a worker equals the in-process engine exactly."""
    with EngineClient(_spec(t2v_ckpt, 1), start_timeout_s=120) as one:
        assert one._group.store_path != group2._group.store_path
        assert not set(one.pids) & set(group2.pids)
        results = {}

        def run(name, client):
            results[name] = client.generate(REQUEST)

        threads = [threading.Thread(target=run, args=(n, c)) for n, c in (("one", one), ("two", group2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        _assert_matches(results["one"], reference, exact=True)
        _assert_matches(results["two"], reference)
        pids = one.pids
    assert _wait_gone(pids, 5) == []
    assert group2.alive


@pytest.mark.timeout(180)
def test_sigkill_of_a_worker_mid_run(t2v_ckpt):
    client = EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120)
    pids = client.pids
    kill = KillAtDenoise(pids[1])
    try:
        with pytest.raises(WorkerFailure) as info:
            client.generate(GenerateRequest(**{**REQUEST.__dict__, "steps": 20}), on_progress=kill)
        elapsed = time.monotonic() - kill.killed_at
        assert elapsed < 10, elapsed
        f = info.value
        assert f.rank == 1 and f.exc_type == "WorkerDied" and "SIGKILL" in f.message
        assert str(pids[1]) in f.message and "log" in f.traceback
        assert not client.alive and not client.status().alive
        assert _leftovers(pids) == []          # already gone when the exception surfaced
        with pytest.raises(WorkerFailure):     # a dead group says so
            client.generate(REQUEST)
    finally:
        client.close()
        _kill_all(pids)


@pytest.mark.timeout(120)
def test_broken_checkpoint_fails_start_with_the_rank(t2v_ckpt, tmp_path):
    """A truncated shard: the rank's CheckpointError comes back as a WorkerFailure, no hang, no
    process left."""
    broken = tmp_path / TASK
    broken.mkdir()
    for entry in t2v_ckpt.iterdir():
        if entry.name != "high_noise_model":
            os.symlink(entry.resolve(), broken / entry.name)
    expert = broken / "high_noise_model"
    expert.mkdir()
    src = (t2v_ckpt / "high_noise_model").resolve()
    for f in src.iterdir():
        if f.name.endswith("00002-of-00003.safetensors"):
            (expert / f.name).write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            os.symlink(f, expert / f.name)

    before = _worker_children()
    t0 = time.monotonic()
    with pytest.raises(WorkerFailure) as info:
        EngineClient(_spec(broken, 2), start_timeout_s=100)
    assert time.monotonic() - t0 < 60
    f = info.value
    assert f.exc_type == "CheckpointError" and f.user_error and f.rank in (0, 1)
    assert "00002-of-00003.safetensors" in f.message
    assert _worker_children() - before == set()


DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from wan_core import EngineSpec, ParallelConfig, ParamDtype, Task
    from wan_core.client import EngineClient
    spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir={ckpt!r}, device="cpu", param_dtype=ParamDtype.FP32,
                      parallel=ParallelConfig(num_gpus={n}, ulysses_size={n}))
    client = EngineClient(spec, start_timeout_s=120)
    print("PIDS", client._group._dir, *client.pids, flush=True)
    time.sleep(600)
""")


@contextlib.contextmanager
def _driver(ckpt, n: int = 2) -> Iterator[tuple[subprocess.Popen, str, list[int]]]:
    """A separate process that owns an n-rank group (DRIVER) and sleeps, for tests that kill or
    signal it: yields it, the group's private folder and the worker pids (DRIVER's first line);
    on the way out it and any worker still there are killed."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER.format(repo=str(REPO), ckpt=str(ckpt), n=n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = driver.stdout.readline()
        assert line.startswith("PIDS"), line + driver.stderr.read()
        folder, pids = line.split()[1], [int(p) for p in line.split()[2:]]
        yield driver, folder, pids
    finally:
        driver.kill()
        driver.wait()
        _kill_all(pids)


@pytest.mark.timeout(180)
def test_killed_client_leaves_no_workers(t2v_ckpt):
    """SIGKILL of the process that owns the group: no atexit runs; the workers see their
    lifeline close (and PR_SET_PDEATHSIG) and exit by themselves."""
    with _driver(t2v_ckpt) as (driver, folder, pids):
        assert len(_leftovers(pids)) == 2 and os.path.isdir(folder)
        driver.kill()
        driver.wait()
        assert _wait_gone(pids, 5) == []
        # PR_SET_PDEATHSIG's SIGKILL usually beats the lifeline thread's clean-up: the next group
        # start sweeps what a dead client left behind.
        sweep_stale_groups()
        assert not os.path.exists(folder)


@pytest.mark.timeout(180)
def test_run_under_torchrun(t2v_ckpt, reference, tmp_path):
    """The CLI's torchrun path: each launched process joins the launched group and runs the
    engine directly; rank 0 returns the same result as a worker group."""
    script = tmp_path / "launch.py"
    out = tmp_path / "result.pt"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from wan_core import EngineSpec, GenerateRequest, ParallelConfig, ParamDtype, Task
        from wan_core.runtime.dist_init import run_under_torchrun
        spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir={str(t2v_ckpt)!r}, device="cpu",
                          param_dtype=ParamDtype.FP32, parallel=ParallelConfig(num_gpus=2, ulysses_size=2))
        result = run_under_torchrun(spec, GenerateRequest(prompt={REQUEST.prompt!r}, size={REQUEST.size!r},
                                    frame_num={REQUEST.frame_num}, steps={REQUEST.steps}, seed={REQUEST.seed}))
        if result is not None:
            torch.save({{"latent": result.latent, "video": result.video}}, {str(out)!r})
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script)], env=env, capture_output=True,
                          text=True, timeout=160)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert rel_err(got["latent"], reference.latent) <= TOL
    assert (got["video"].int() - reference.video.int()).abs().max() <= 1


@pytest.mark.timeout(180)
def test_cli_under_torchrun(t2v_ckpt, reference, tmp_path):
    """`torchrun -m wan_core generate ...`: the CLI hands the launched process to
    `run_under_torchrun` (one code path); rank 0 saves the same latent as one rank in-process."""
    latent, video = tmp_path / "latent.safetensors", tmp_path / "out.mp4"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    w, h = REQUEST.size
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "wan_core", "generate", "--task", TASK, "--ckpt_dir", str(t2v_ckpt), "--device", "cpu",
         "--prompt", REQUEST.prompt, "--size", f"{w}*{h}", "--frame_num", str(REQUEST.frame_num),
         "--sample_steps", str(REQUEST.steps), "--base_seed", str(REQUEST.seed),
         "--save_file", str(video), "--save_latent", str(latent)],
        env=env, cwd=str(REPO), capture_output=True, text=True, timeout=160)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    assert rel_err(load_file(str(latent))["latent"], reference.latent) <= TOL
    assert video.is_file()
    # 64*48 is not an official size: said once (rank 0, before the bars), not once per rank
    assert proc.stderr.count("is not one of the official sizes") == 1, proc.stderr[-3000:]
