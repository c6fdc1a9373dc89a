"""The client's watchdog over a running request: which rank is hung, and since when.

Workers send a `Heartbeat` every `heartbeat_s` from a thread of their own (so a rank busy in a long
kernel or waiting in a collective still beats; a rank whose whole process is stopped, frozen in the
kernel, or holding the GIL for good does not), and answer a `Cancel` at once from their reader
thread (`CancelAck`). `Watchdog.check(now)` turns what arrived into a verdict, three rules:

1. silence: no message at all from a rank for longer than `max(silence_s, step_factor x step)`;
2. cancel: a rank has not acknowledged a Cancel within `cancel_ack_s` (10 s);
3. stop: every rank acknowledged, but some rank has not stopped `max(stop_s, step_factor x step)`
   after the Cancel (all processes alive, none moving: a deadlocked collective, a wedged GPU).

`step` is the longest denoising step seen so far on this group (rank 0's progress events), so the
bounds grow with slow layouts and stay tight on fast ones. The client ends the group on a verdict
(`WorkerGroup.fail`: every worker killed, GPU memory freed with the processes) and raises it; the
next request starts a fresh group. Pure bookkeeping, no threads, no I/O except /proc reads for
the message; unit-tested with a fake clock.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from ..errors import WorkerFailure

REMEDY = ("The group was ended (its processes killed, their GPU memory freed); the next prompt "
          "starts a new one. Usual causes: a stopped or frozen worker process (SIGSTOP, a debugger, "
          "swap), a GPU that stopped answering (check `nvidia-smi` and `dmesg` for Xid errors), or a "
          "deadlocked NCCL collective (run again with NCCL_DEBUG=WARN and read the rank logs).")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class WatchdogConfig:
    """Bounds of the watchdog (seconds). `from_env()` reads WAN_CORE_HEARTBEAT_S,
    WAN_CORE_SILENCE_S, WAN_CORE_CANCEL_ACK_S, WAN_CORE_STOP_S, WAN_CORE_LOAD_SILENCE_S (tests
    shorten them)."""

    heartbeat_s: float = 1.0
    silence_s: float = 30.0
    """A rank silent this long (or step_factor x the longest step, if more) is hung. Heartbeats come
    from their own thread every second, so only a stopped or frozen process is ever this quiet."""
    cancel_ack_s: float = 10.0
    stop_s: float = 120.0
    """After every rank acknowledged a Cancel: the time to reach the next step boundary (a cancel
    during text encoding or decoding waits for it) before the group counts as deadlocked."""
    step_factor: float = 3.0
    load_silence_s: float = 300.0
    """While a group starts: a rank not heard from for this long (from its spawn: importing torch,
    joining, loading weights) is hung. Generous, because a rank reading a large file may hold the
    GIL, and its heartbeat thread with it, for a while."""

    @classmethod
    def from_env(cls) -> "WatchdogConfig":
        d = cls()
        return cls(heartbeat_s=_env_float("WAN_CORE_HEARTBEAT_S", d.heartbeat_s),
                   silence_s=_env_float("WAN_CORE_SILENCE_S", d.silence_s),
                   cancel_ack_s=_env_float("WAN_CORE_CANCEL_ACK_S", d.cancel_ack_s),
                   stop_s=_env_float("WAN_CORE_STOP_S", d.stop_s),
                   load_silence_s=_env_float("WAN_CORE_LOAD_SILENCE_S", d.load_silence_s))


def process_state(pid: int) -> str:
    """What /proc says about a process, in words ('' when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return {"T": "its process is stopped (SIGSTOP or a debugger)",
            "t": "its process is stopped by a debugger",
            "D": "its process is blocked in the kernel (uninterruptible sleep: often a GPU driver or "
                 "a disk)",
            "Z": "its process has exited",
            "R": "its process is running",
            "S": "its process is waiting"}.get(state, f"process state {state}")


class Watchdog:
    """Per-group bookkeeping; the client calls `begin` per request, `heard` for every message of
    a rank (heartbeats included), `step_seen` for rank 0's denoise events, `cancel_sent`,
    `acked`, `done`, and `check(now)` at every poll."""

    def __init__(self, world_size: int, pids: list[int], config: WatchdogConfig) -> None:
        self.config = config
        self.world_size = world_size
        self.pids = list(pids)
        self.step_s = 0.0                      # longest denoise step seen on this group
        self._last: dict[int, float] = {}
        self._what: dict[int, str] = {}
        self._pending: set[int] = set()
        self._acked: set[int] = set()
        self._cancel_at: Optional[float] = None
        self._last_step_at: Optional[float] = None

    # -- what happened ---------------------------------------------------------------------------
    def begin(self, now: float) -> None:
        self._last = {r: now for r in range(self.world_size)}
        self._what = {r: "starting the request" for r in range(self.world_size)}
        self._pending = set(range(self.world_size))
        self._acked = set()
        self._cancel_at = None
        self._last_step_at = None

    def heard(self, rank: int, at: float, what: Optional[str] = None) -> None:
        """Rank `rank` sent something at `at` (a heartbeat counts); `what`: its phase then."""
        self._last[rank] = max(self._last.get(rank, at), at)
        if what:
            self._what[rank] = what

    def step_seen(self, now: float, step: Optional[int]) -> None:
        """Rank 0 finished denoising step `step` (1-based) at `now`."""
        if self._last_step_at is not None and step is not None and step > 1:
            self.step_s = max(self.step_s, now - self._last_step_at)
        self._last_step_at = now

    def cancel_sent(self, now: float) -> None:
        if self._cancel_at is None:
            self._cancel_at = now

    def acked(self, rank: int) -> None:
        self._acked.add(rank)

    def done(self, rank: int) -> None:
        """The rank answered the request (Finished, Stopped or Failed)."""
        self._pending.discard(rank)
        self._acked.add(rank)

    # -- verdict ---------------------------------------------------------------------------------
    def bound(self, base_s: float) -> float:
        return max(base_s, self.config.step_factor * self.step_s)

    def check(self, now: float) -> Optional[WorkerFailure]:
        """A WorkerFailure naming the hung rank, or None while every rank is within bounds."""
        cfg = self.config
        silence = self.bound(cfg.silence_s)
        for rank in sorted(self._pending):
            quiet = now - self._last.get(rank, now)
            if quiet > silence:
                return self._failure(rank, f"sent nothing for {quiet:.1f} s (bound {silence:.1f} s, "
                                           "heartbeats come every "
                                           f"{cfg.heartbeat_s:g} s)")
        if self._cancel_at is None:
            return None
        waited = now - self._cancel_at
        if waited > cfg.cancel_ack_s:
            missing = sorted(self._pending - self._acked)
            if missing:
                return self._failure(missing[0], f"did not acknowledge Cancel within "
                                                  f"{cfg.cancel_ack_s:g} s", missing)
        stop = self.bound(cfg.stop_s)
        if waited > stop and self._pending:
            return self._failure(min(self._pending), f"acknowledged Cancel but did not stop within "
                                                      f"{stop:.1f} s", sorted(self._pending))
        return None

    def _failure(self, rank: int, what: str, ranks: Optional[list[int]] = None) -> WorkerFailure:
        pid = self.pids[rank] if rank < len(self.pids) else -1
        others = ""
        if ranks and len(ranks) > 1:
            others = f" (ranks {', '.join(map(str, ranks))} are all late)"
        meanwhile = [f"rank {r} was {self._what.get(r, '?')}" for r in sorted(self._pending) if r != rank]
        return hung(rank, pid, what + others, self._what.get(rank, "?"), meanwhile=meanwhile)


def hung(rank: int, pid: int, what: str, doing: str, log_tail: str = "",
         meanwhile: Optional[list[str]] = None) -> WorkerFailure:
    """The WorkerHung failure: the rank, its pid, what went wrong, what it was doing (phase, step,
    the collective or engine line its heartbeat last reported), its process state, what the other
    ranks were doing, and the usual remedy."""
    state = process_state(pid)
    others = f" Meanwhile {'; '.join(meanwhile)}." if meanwhile else ""
    message = (f"worker rank {rank} (pid {pid}) {what}; it was {doing}"
               f"{'; ' + state if state else ''}.{others} {REMEDY}")
    return WorkerFailure(rank, "WorkerHung", message, log_tail)
