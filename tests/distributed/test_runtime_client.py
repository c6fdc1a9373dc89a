"""EngineClient's request bookkeeping against a scripted stand-in for the worker group (test-only):
the outcomes real workers cannot be made to produce on demand."""
from __future__ import annotations

import queue
import threading

import pytest

import wan_core.client as client_mod
from wan_core.client import EngineClient
from wan_core.config import EngineSpec, GenerateRequest, GenerateResult, Task
from wan_core.errors import Cancelled, WorkerFailure
from wan_core.runtime import protocol as P
from wan_core.runtime.group import GroupDied, RankMessage
from wan_core.runtime.watchdog import Watchdog, WatchdogConfig

pytestmark = pytest.mark.timeout(30)


class ScriptedGroup:
    """Answers each Generate with the scripted messages; records what the client sent."""

    def __init__(self, world_size: int, script) -> None:
        self.world_size = world_size
        self.script = script            # fn(rid, sent_msg, group) called for every send
        self.events: queue.Queue = queue.Queue()
        self.sent: list = []
        self.failed = None
        self.alive = True
        self.failure = None
        self.last_heard: dict = {}
        self.pids = [0] * world_size

    def log_tail(self, rank) -> str:
        return ""

    def send(self, rank, msg) -> None:
        self.sent.append((rank, msg))
        self.script(rank, msg, self)

    def fail(self, failure) -> None:
        self.failed = failure
        self.alive = False
        self.failure = failure

    def post(self, rank, msg) -> None:
        self.events.put(RankMessage(rank, msg))


def _client(group) -> EngineClient:
    c = object.__new__(EngineClient)
    c.spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir="unused")   # generate() checks the request against it
    c._group = group
    c._job_lock = threading.Lock()
    c._ids = iter(range(1, 100))
    c._active = None
    c._cancel_requested = False
    c._watchdog = Watchdog(group.world_size, group.pids, WatchdogConfig())
    return c


def _failed(rank, rid, exc_type="RuntimeError", user=False):
    return P.Failed(rank, rid, exc_type, f"boom on {rank}", "Traceback ...", user)


REQ = GenerateRequest(prompt="x")


def _progress_then_stopped(step: int):
    """Script: rank 0 reports one denoise step; a Cancel makes both ranks answer Stopped(`step`)."""

    def script(rank, msg, g):
        if isinstance(msg, P.Generate) and rank == 0:
            g.post(0, P.ProgressEvent(msg.request_id, "denoise", 1, 4))
        if isinstance(msg, P.Cancel):
            for r in range(2):
                g.post(r, P.Stopped(msg.request_id, r, step))

    return script


def test_one_rank_fails_and_the_other_is_stuck_kills_the_group(monkeypatch):
    monkeypatch.setattr(client_mod, "ERROR_GRACE_S", 0.3)

    def script(rank, msg, g):
        if isinstance(msg, P.Generate) and rank == 1:
            g.post(1, _failed(1, msg.request_id, "OutOfMemoryError"))   # rank 0 never answers

    g = ScriptedGroup(2, script)
    with pytest.raises(WorkerFailure) as info:
        _client(g).generate(REQ)
    assert info.value.rank == 1 and info.value.exc_type == "OutOfMemoryError"
    assert g.failed is not None and g.failed.rank == 1      # the group was killed


def test_every_rank_fails_keeps_the_group_and_names_rank_0():
    def script(rank, msg, g):
        if isinstance(msg, P.Generate):
            g.post(rank, _failed(rank, msg.request_id, "InputError", user=True))

    g = ScriptedGroup(2, script)
    with pytest.raises(WorkerFailure) as info:
        _client(g).generate(REQ)
    assert info.value.rank == 0 and info.value.user_error
    assert g.failed is None


def test_progress_exception_cancels_then_reraises():
    class Interrupt(BaseException):
        pass

    script = _progress_then_stopped(2)

    def on_progress(e):
        raise Interrupt()

    g = ScriptedGroup(2, script)
    with pytest.raises(Interrupt):
        _client(g).generate(REQ, on_progress=on_progress)
    assert [type(m).__name__ for r, m in g.sent] == ["Generate", "Generate", "Cancel", "Cancel"]
    assert [r for r, m in g.sent[2:]] == [0, 1] and g.failed is None     # Cancel to every rank


def test_cancel_not_acknowledged_ends_the_group_naming_the_rank():
    """Rank 1 never answers (a stopped process): after Cancel, the watchdog's ack bound ends the
    group; the failure names rank 1 and what it last reported."""
    def script(rank, msg, g):
        if isinstance(msg, P.Generate) and rank == 0:
            g.post(0, P.ProgressEvent(msg.request_id, "denoise", 1, 4))
        if isinstance(msg, P.Cancel) and rank == 0:
            g.post(0, P.CancelAck(msg.request_id, 0, "generating: denoise 1/4"))

    g = ScriptedGroup(2, script)
    c = _client(g)
    c._watchdog = Watchdog(2, g.pids, WatchdogConfig(silence_s=60, cancel_ack_s=0.5))
    g.last_heard = {1: (0.0, "generating: denoise 2/4")}
    with pytest.raises(WorkerFailure) as info:
        c.generate(REQ, should_cancel=lambda: True)
    f = info.value
    assert f.rank == 1 and f.exc_type == "WorkerHung" and g.failed is not None
    assert "did not acknowledge Cancel within 0.5 s" in f.message
    assert "generating: denoise 2/4" in f.message


def test_stale_events_and_result():
    result = GenerateResult(latent=None, video=None, fps=16, seed=1)

    def script(rank, msg, g):
        if isinstance(msg, P.Generate):
            g.post(rank, P.Finished(msg.request_id - 1, rank, "stale"))   # an older request's
            g.post(rank, P.Finished(msg.request_id, rank, result if rank == 0 else None))

    g = ScriptedGroup(2, script)
    assert _client(g).generate(REQ) is result


def test_death_while_running_raises_the_groups_failure():
    dead = WorkerFailure(1, "WorkerDied", "worker rank 1 (pid 9) was killed by SIGKILL")

    def script(rank, msg, g):
        if isinstance(msg, P.Generate) and rank == 1:
            g.fail(dead)
            g.events.put(GroupDied(dead))

    c = _client(ScriptedGroup(2, script))
    with pytest.raises(WorkerFailure, match="SIGKILL") as info:
        c.generate(REQ)
    assert info.value.rank == 1 and not c.alive
    with pytest.raises(WorkerFailure, match="SIGKILL"):
        c.generate(REQ)


def test_should_cancel_raises_cancelled_with_the_step():
    with pytest.raises(Cancelled) as info:
        _client(ScriptedGroup(2, _progress_then_stopped(1))).generate(REQ, should_cancel=lambda: True)
    assert info.value.step == 1
