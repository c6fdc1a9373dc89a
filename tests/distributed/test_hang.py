"""Issue 15 on real gloo worker groups (CPU, tiny T2V): a stopped rank never hangs the client,
nothing listens beyond this machine, and a dead client's workers clean up after it themselves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO
from tests.distributed.test_runtime import REQUEST, _driver, _kill_all, _leftovers, _spec, _wait_gone
from tests._procs import sigstop
from tests._sockets import exposed, listening
from wan_core import GenerateRequest
from wan_core.client import EngineClient
from wan_core.errors import WorkerFailure
from wan_core.runtime.watchdog import WatchdogConfig

LONG = GenerateRequest(**{**REQUEST.__dict__, "steps": 400})   # never done before the stop lands


@pytest.fixture(scope="module")
def t2v_ckpt(tiny_dir, tmp_path_factory) -> Path:
    from tests.parity._tiny import task_ckpt

    return task_ckpt(tiny_dir, "t2v-A14B", tmp_path_factory.mktemp("ckpt"))


class StopAtDenoise:
    """on_progress: SIGSTOP `pid` at the first denoise step that comes `settle_s` after the first
    one (so the stopped rank's last heartbeat, sent every 0.2 s, already says it was generating
    even on a loaded machine); optionally scan sockets first."""

    def __init__(self, pid: int, scan=None, settle_s: float = 1.0) -> None:
        self.pid, self.scan, self.settle_s = pid, scan, settle_s
        self.first_step_at = None
        self.stopped_at = None
        self.sockets = None

    def __call__(self, event) -> None:
        if event.phase != "denoise" or self.stopped_at is not None:
            return
        now = time.monotonic()
        if self.first_step_at is None:
            self.first_step_at = now
        if now - self.first_step_at >= self.settle_s:
            if self.scan is not None:
                self.sockets = self.scan()
            sigstop(self.pid)
            self.stopped_at = time.monotonic()


def _shm(token: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(token)]


def _check_ended(client, pids, folder, token) -> None:
    assert not client.alive and _leftovers(pids) == []       # killed before the exception surfaced
    client.close()
    assert not os.path.exists(folder) and _shm(token) == []


@pytest.mark.timeout(120)
def test_stopped_rank_without_cancel_is_found_by_silence(t2v_ckpt):
    """SIGSTOP rank 1 mid-run, no Cancel: with a 4 s silence bound the request fails in a few
    seconds naming rank 1 (stopped, at its step); every process and file of the group is gone.
    Before it, a socket scan of this process and the workers while they run: every listening
    socket is loopback-only or a Unix socket in a 0700 folder (the store is a file, gloo is on lo)."""
    cfg = WatchdogConfig(heartbeat_s=0.2, silence_s=4.0)
    client = EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120, watchdog=cfg)
    pids, folder, token = client.pids, client._group._dir, client._group._token
    everyone = [os.getpid(), *pids]
    stop = StopAtDenoise(pids[1], scan=lambda: [(s, s.problem()) for s in listening(everyone)])
    try:
        with pytest.raises(WorkerFailure) as info:
            client.generate(LONG, on_progress=stop)
        elapsed = time.monotonic() - stop.stopped_at
        f = info.value
        assert f.rank == 1 and f.exc_type == "WorkerHung", f
        assert "sent nothing for" in f.message and "stopped (SIGSTOP" in f.message, f.message
        assert "it was generating" in f.message and str(pids[1]) in f.message
        # Rank 0 waits for rank 1 in a collective: its heartbeats said which one, and from where.
        assert "Meanwhile rank 0 was generating: denoise" in f.message, f.message
        assert "in torch.distributed " in f.message and "from wan_core/distributed/" in f.message, f.message
        # silence counts from rank 1's last heartbeat, which can precede the stop by one beat (0.2 s)
        assert 4.0 - cfg.heartbeat_s < elapsed < 15.0, elapsed
        _check_ended(client, pids, folder, token)
        # The scan saw the workers' gloo pairs (TCP on loopback) and the control socket.
        kinds = {(s.kind, s.pid == os.getpid()) for s, _ in stop.sockets}
        assert ("tcp", False) in kinds and ("unix", True) in kinds, stop.sockets
        bad = [(s, why) for s, why in stop.sockets if why]
        assert bad == [], bad
        assert exposed(everyone) == []
    finally:
        client.close()
        _kill_all(pids)


@pytest.mark.timeout(120)
def test_stopped_rank_then_cancel_ends_the_group_then_a_new_one_runs(t2v_ckpt):
    """SIGSTOP rank 1, then Cancel: rank 0 acknowledges, rank 1 cannot; after the ack bound the
    group is ended naming rank 1; a new client on the same spec runs the request."""
    cfg = WatchdogConfig(heartbeat_s=0.2, silence_s=60.0, cancel_ack_s=2.0)
    client = EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120, watchdog=cfg)
    pids, folder, token = client.pids, client._group._dir, client._group._token
    stop = StopAtDenoise(pids[1])
    try:
        with pytest.raises(WorkerFailure) as info:
            client.generate(LONG, on_progress=stop, should_cancel=lambda: stop.stopped_at is not None)
        elapsed = time.monotonic() - stop.stopped_at
        f = info.value
        assert f.rank == 1 and f.exc_type == "WorkerHung"
        assert "did not acknowledge Cancel within 2 s" in f.message and "stopped (SIGSTOP" in f.message
        assert elapsed < 8.0, elapsed
        _check_ended(client, pids, folder, token)
    finally:
        client.close()
        _kill_all(pids)
    with EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120, watchdog=cfg) as fresh:
        assert fresh.generate(REQUEST).latent.shape == (16, 2, 6, 8)


def _my_workers() -> dict[int, int]:
    """pid -> rank of the worker processes this process started."""
    return _children_workers(os.getpid())


@pytest.mark.timeout(120)
def test_rank_stopped_while_the_group_starts_fails_the_start(t2v_ckpt):
    """A rank stopped while the group loads (at rank 0's first loading report: both ranks have
    joined and load side by side): with a 15 s start silence bound the constructor raises
    WorkerHung naming it (not the 30-minute start timeout), and nothing is left. (15 s, not less:
    on 2 busy cores a loading rank's heartbeat thread was seen to wait 10 s for the GIL.)"""
    before = set(_my_workers())
    stopped = []

    def stop_rank_1(event) -> None:
        if not stopped:
            for pid, rank in _my_workers().items():
                if rank == 1 and pid not in before:
                    sigstop(pid)
                    stopped.append((pid, time.monotonic()))

    cfg = WatchdogConfig(heartbeat_s=0.2, load_silence_s=15.0)
    with pytest.raises(WorkerFailure) as info:
        EngineClient(_spec(t2v_ckpt, 2), start_timeout_s=120, watchdog=cfg, on_progress=stop_rank_1)
    assert stopped, info.value
    pid, at = stopped[0]
    f = info.value
    assert f.rank == 1 and f.exc_type == "WorkerHung" and str(pid) in f.message, f
    assert "while the group started" in f.message and "stopped (SIGSTOP" in f.message, f.message
    assert time.monotonic() - at < 30
    assert _wait_gone([pid], 5) == [] and set(_my_workers()) - before == set()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_dead_client_workers_remove_its_folder_and_shm(t2v_ckpt, sig):
    """The process that owns the group dies (SIGKILL, or SIGTERM, which Python does not catch):
    the workers exit and remove the group's private folder and shared memory themselves (no
    later sweep needed)."""
    with _driver(t2v_ckpt) as (driver, folder, pids):
        assert os.path.isdir(folder) and Path(folder).parent == Path(tempfile.gettempdir())
        driver.send_signal(sig)
        driver.wait()
        assert _wait_gone(pids, 5) == []
        deadline = time.monotonic() + 5
        while os.path.exists(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(folder)


@pytest.mark.timeout(180)
def test_cli_with_a_stopped_worker_exits_with_the_message(t2v_ckpt, tmp_path):
    """`python -m wan_core generate --num_gpus 2` (a worker group): rank 1 stopped once denoising
    shows on stderr; with WAN_CORE_SILENCE_S=4 the CLI exits 1 naming rank 1 (WorkerHung), and
    no worker is left."""
    import threading

    env = dict(os.environ, OMP_NUM_THREADS="1", WAN_CORE_SILENCE_S="4", WAN_CORE_HEARTBEAT_S="0.2",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    w, h = REQUEST.size
    proc = subprocess.Popen(
        [sys.executable, "-m", "wan_core", "generate", "--task", "t2v-A14B", "--ckpt_dir", str(t2v_ckpt),
         "--device", "cpu", "--num_gpus", "2", "--ulysses_size", "2", "--prompt", REQUEST.prompt,
         "--size", f"{w}*{h}", "--frame_num", str(REQUEST.frame_num), "--sample_steps", "400",
         "--base_seed", "1", "--save_file", str(tmp_path / "out.mp4")],
        env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    workers: dict[int, int] = {}
    stopped = threading.Event()

    def read() -> None:
        for line in iter(lambda: proc.stderr.read(200), ""):
            err.append(line)
            if not stopped.is_set() and "denoise" in "".join(err[-3:]):
                workers.update(_children_workers(proc.pid))
                pid = next(p for p, r in workers.items() if r == 1)
                sigstop(pid)
                stopped.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=150) == 1
        reader.join(10)
        text = "".join(err)
        assert stopped.is_set(), text[-2000:]
        assert "error: worker rank 1 failed: WorkerHung" in text and "stopped (SIGSTOP" in text, text[-2000:]
        assert _wait_gone(list(workers), 5) == []
    finally:
        proc.kill()
        _kill_all(list(workers))


def _children_workers(ppid: int) -> dict[int, int]:
    """pid -> rank of the worker processes whose parent is `ppid`."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == ppid and b"wan_core.runtime.worker" in cmd:
            out[int(entry)] = int(cmd[cmd.index(b"--rank") + 1])
    return out
