"""The client's watchdog rules (runtime/watchdog.py) on a fake clock, and the socket scanner the
"nothing listens beyond this machine" tests rely on (it must see an all-interfaces listener)."""
from __future__ import annotations

import os
import socket

from wan_core.runtime.watchdog import Watchdog, WatchdogConfig

CFG = WatchdogConfig(heartbeat_s=1.0, silence_s=5.0, cancel_ack_s=10.0, stop_s=20.0, step_factor=3.0)


def _dog(world: int = 2) -> Watchdog:
    dog = Watchdog(world, [os.getpid()] * world, CFG)
    dog.begin(100.0)
    return dog


def test_silence_names_the_quiet_rank_and_what_it_did():
    dog = _dog()
    for t in range(101, 106):
        dog.heard(0, float(t), "generating: denoise 2/20")
        dog.heard(1, float(t) if t < 103 else 102.0, "generating: denoise 2/20")
    assert dog.check(105.0) is None
    dog.heard(0, 107.5)
    f = dog.check(107.5)           # rank 1 silent for 5.5 s > 5 s
    assert f is not None and f.rank == 1 and f.exc_type == "WorkerHung"
    assert "worker rank 1" in f.message and "sent nothing for 5.5 s" in f.message
    assert "generating: denoise 2/20" in f.message and "next prompt starts a new one" in f.message
    assert "its process is running" in f.message or "its process is waiting" in f.message


def test_silence_bound_grows_with_the_step_time():
    dog = _dog()
    for step, t in enumerate((101.0, 105.0, 109.0), start=1):     # 4 s steps -> bound 12 s
        dog.step_seen(t, step)
    assert dog.step_s == 4.0 and dog.bound(CFG.silence_s) == 12.0
    dog.heard(0, 120.0)
    dog.heard(1, 109.0)
    assert dog.check(120.0) is None                       # 11 s quiet < 12 s
    assert dog.check(121.5).rank == 1


def test_a_rank_that_answered_is_not_watched():
    dog = _dog()
    dog.done(1)                    # rank 1 finished; rank 0 is still decoding, heard from
    dog.heard(0, 130.0)
    assert dog.check(130.0) is None


def test_cancel_must_be_acknowledged_in_time():
    dog = _dog()
    dog.cancel_sent(101.0)
    for t in range(102, 112):
        dog.heard(0, float(t))
        dog.heard(1, float(t))     # alive (heartbeats) but never acks: e.g. its reader is stuck
    dog.acked(0)
    assert dog.check(110.9) is None
    f = dog.check(111.5)
    assert f.rank == 1 and "did not acknowledge Cancel within 10 s" in f.message


def test_acknowledged_cancel_must_stop_within_the_stop_bound():
    dog = _dog()
    dog.cancel_sent(101.0)
    dog.acked(0)
    dog.acked(1)
    for t in range(102, 123):
        dog.heard(0, float(t))
        dog.heard(1, float(t))
    dog.done(1)
    assert dog.check(120.9) is None
    f = dog.check(121.5)
    assert f.rank == 0 and "did not stop within 20.0 s" in f.message


def test_config_from_env(monkeypatch):
    monkeypatch.setenv("WAN_CORE_SILENCE_S", "2.5")
    monkeypatch.setenv("WAN_CORE_CANCEL_ACK_S", "bad")
    cfg = WatchdogConfig.from_env()
    assert cfg.silence_s == 2.5 and cfg.cancel_ack_s == 10.0 and cfg.heartbeat_s == 1.0


def test_socket_scan_sees_an_all_interfaces_listener():
    from tests._sockets import exposed, listening

    with socket.socket(socket.AF_INET6) as wide, socket.socket() as local:
        wide.bind(("::", 0))
        wide.listen()
        local.bind(("127.0.0.1", 0))
        local.listen()
        found = {(s.kind, s.address) for s in listening([os.getpid()])}
        assert ("tcp", f"127.0.0.1:{local.getsockname()[1]}") in found
        bad = exposed([os.getpid()])
        assert [s.address for s, _ in bad] == [f"[::]:{wide.getsockname()[1]}"]
