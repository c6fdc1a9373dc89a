"""WorkerGroup: one `python -m wan_core.runtime.worker` process per rank, started and supervised.

Knows processes, connections and failures; nothing about requests (that is `wan_core.client`).
Decisions and their reasons: docs/architecture.md (Runtime):

- `subprocess.Popen`, never multiprocessing spawn (inside ComfyUI a spawn child re-runs main.py);
  each child has its own environment (one physical GPU, OMP threads), its own session (so a
  `killpg` reaches its grandchildren), its stdout/stderr in a per-rank log file, and the pack root
  on PYTHONPATH (it imports `wan_core` top-level, like the parent).
- Nothing listens beyond this machine: the rendezvous is a `FileStore` in the group's private (0700)
  temporary folder (no TCP store: torch's TCPStore binds every interface, even when given
  127.0.0.1), gloo and NCCL's bootstrap are bound to the loopback interface (`child_envs`), and
  control is an AF_UNIX `Listener` in the same folder with a random authkey; each rank connects,
  says Hello, gets its `WorkerConfig`, and answers Ready or Failed. Single machine only: there is
  no multi-host worker group (multi-host means torchrun, explicitly; docs/architecture.md).
- Supervision: one thread waits (`multiprocessing.connection.wait`) on a pidfd per worker and on
  every connection, and notes when each rank was last heard from (`last_heard`: heartbeats
  included), for the client's watchdog (`runtime/watchdog.py`). A rank that dies unasked takes the group down at once (SIGTERM to every
  worker's process group, SIGKILL after `TERM_GRACE_S`) and is reported as a `WorkerFailure`
  naming the rank, its exit status and the tail of its log. Crash-only: no partial recovery.
- Orphans: workers exit when the lifeline pipe closes (the parent died or exec'd) and by
  PR_SET_PDEATHSIG (`lifeline.py`); children are spawned from one long-lived thread for the latter.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, replace
from multiprocessing.connection import AuthenticationError, Listener
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Callable, Optional, Union

from ..config import EngineSpec
from ..errors import Cancelled, WorkerFailure
from . import protocol as P
from .processes import (OWNER_FILE, PACK_ROOT, Spawner, check_start, child_envs, describe_exit,
                        exit_status, proc_start_time, sweep_stale_groups)
from .transport import Channel, sweep
from .watchdog import hung

TERM_GRACE_S = 3.0
SHUTDOWN_GRACE_S = 5.0
PG_TIMEOUT_S = 1800.0
"""Collective timeout of the process groups: longer than any legitimate collective, loading skew
included. Idle ranks wait on their pipe, never in a collective."""
_HELLO_TIMEOUT_S = 30.0
_CONNECT_SILENCE_S = 120.0
"""A rank that has not connected this long after its spawn is hung (its Python imports, torch's
CUDA start-up, can take a minute on a cold disk); after it connected, `load_silence_s` applies."""
_LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class RankMessage:
    """A message a rank sent (anything but status replies)."""

    rank: int
    msg: object


@dataclass(frozen=True)
class GroupDied:
    """The group is gone: a rank died or failed, or the group was closed."""

    failure: WorkerFailure


GroupEvent = Union[RankMessage, GroupDied]


class WorkerGroup:
    """Starts `spec.parallel.num_gpus` workers and waits until every rank is Ready.

    Raises `WorkerFailure` (naming the rank) when a rank fails or dies while starting, or does not
    become ready within `start_timeout_s`; `Cancelled` when `should_cancel()` turns true while
    loading. `on_progress` hears rank 0's loading steps (`ProgressEvent`, phase "load").
    Nothing is left running when the constructor raises.
    """

    def __init__(self, spec: EngineSpec, *, start_timeout_s: float = 1800.0,
                 should_cancel: Optional[Callable[[], bool]] = None,
                 on_progress: Optional[Callable[[P.ProgressEvent], None]] = None,
                 heartbeat_s: float = 1.0, load_silence_s: float = 300.0) -> None:
        check_start(spec)   # ConfigError for an impossible spec before anything is created
        self.spec = spec
        self.heartbeat_s = heartbeat_s
        self.load_silence_s = load_silence_s
        self.last_heard: dict[int, tuple[float, str]] = {}
        """rank -> (time.monotonic() of its last message, its phase as last reported)."""
        self.world_size = spec.parallel.num_gpus
        self.events: "queue.Queue[GroupEvent]" = queue.Queue()
        self.failure: Optional[WorkerFailure] = None
        self.workers: list[P.Ready] = []
        self._token = f"wan{secrets.token_hex(4)}"
        self._procs: list[subprocess.Popen] = []
        self._channels: dict[int, Channel] = {}
        self._startup_failed: dict[int, P.Failed] = {}
        self._lock = threading.Lock()
        self._kill_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._status_cv = threading.Condition()
        self._status_replies: dict[int, dict[int, P.RankStatus]] = {}
        self._query_ids = itertools.count(1)
        self._closing = False
        self._closed = False
        self._reaped = False
        self._lifeline_w: Optional[int] = None
        self._wake_r, self._wake_w = os.pipe()
        self._listener = None
        self._supervisor: Optional[threading.Thread] = None
        self._acceptor: Optional[threading.Thread] = None
        sweep_stale_groups()
        self._dir = tempfile.mkdtemp(prefix="wan_core-")   # mode 0700
        try:
            self._start()
            self.workers = self._await_ready(time.monotonic() + start_timeout_s, should_cancel,
                                             on_progress)
        except BaseException:
            self.close(graceful=False)
            raise

    # ------------------------------------------------------------------ start

    @property
    def alive(self) -> bool:
        return self.failure is None and not self._closing

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def log_path(self, rank: int) -> str:
        return os.path.join(self._dir, f"rank{rank}.log")

    def _start(self) -> None:
        spec = self.spec
        if spec.ckpt_dir and not os.path.isabs(spec.ckpt_dir):   # workers run in the pack root
            self.spec = spec = replace(spec, ckpt_dir=os.path.abspath(spec.ckpt_dir))
        if spec.files.any():
            absolute = {k: os.path.abspath(v) for k, v in vars(spec.files).items() if v}
            self.spec = spec = replace(spec, files=replace(spec.files, **absolute))
        authkey = secrets.token_bytes(32)
        self._sock_path = os.path.join(self._dir, "control.sock")
        self._listener = Listener(self._sock_path, family="AF_UNIX", authkey=authkey)
        self.store_path = os.path.join(self._dir, "store")   # created by the workers
        self._config = dict(spec=spec, world_size=self.world_size, store_path=self.store_path,
                            store_prefix=self._token, pg_timeout_s=PG_TIMEOUT_S,
                            heartbeat_s=self.heartbeat_s)
        envs = child_envs(spec, authkey)
        lifeline_r, self._lifeline_w = os.pipe()
        try:
            self._procs = Spawner.call(lambda: [self._popen(r, env, lifeline_r)
                                                 for r, env in enumerate(envs)])
        finally:
            os.close(lifeline_r)
        spawned = time.monotonic()
        self.last_heard = {r: (spawned, "starting (importing torch, connecting)")
                           for r in range(self.world_size)}
        owner = {"pid": os.getpid(), "start": proc_start_time(os.getpid()), "token": self._token,
                 "workers": self.pids}
        Path(self._dir, OWNER_FILE).write_text(json.dumps(owner))
        self._supervisor = threading.Thread(target=self._supervise, name="wan-supervisor",
                                            daemon=True)
        self._supervisor.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="wan-accept", daemon=True)
        self._acceptor.start()

    def _popen(self, rank: int, env: dict, lifeline_r: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "wan_core.runtime.worker", "--rank", str(rank),
               "--control", self._sock_path, "--lifeline-fd", str(lifeline_r),
               "--parent-pid", str(os.getpid()), "--token", self._token]
        with open(self.log_path(rank), "ab") as log:
            return subprocess.Popen(cmd, env=env, cwd=str(PACK_ROOT), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, pass_fds=(lifeline_r,),
                                    start_new_session=True)

    def _accept_loop(self) -> None:
        connected: set[int] = set()
        while len(connected) < self.world_size and not self._closing:
            try:
                conn = self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                continue
            except OSError:
                return   # listener closed
            if self._closing:
                conn.close()
                return
            try:
                if not conn.poll(_HELLO_TIMEOUT_S):
                    raise TimeoutError("no Hello")
                hello = Channel(conn, "").recv()
                if not isinstance(hello, P.Hello) or hello.protocol != P.PROTOCOL_VERSION:
                    raise ValueError(f"unexpected first message {hello!r}")
                rank = hello.rank
                if rank in connected or not 0 <= rank < self.world_size or self._procs[rank].pid != hello.pid:
                    raise ValueError(f"unexpected Hello {hello!r}")
                channel = Channel(conn, shm_prefix=f"{self._token}p{rank}_")
                channel.send(P.WorkerConfig(shm_prefix=f"{self._token}r{rank}_", **self._config))
            except Exception:  # noqa: BLE001 - a stray or broken client; ignore it
                conn.close()
                continue
            connected.add(rank)
            with self._lock:
                self._channels[rank] = channel
            os.write(self._wake_w, b"c")

    def _await_ready(self, deadline: float, should_cancel, on_progress) -> list[P.Ready]:
        ready: dict[int, P.Ready] = {}
        while len(ready) < self.world_size:
            if should_cancel is not None and should_cancel():
                raise Cancelled()
            now = time.monotonic()
            for rank, (heard_at, phase) in sorted(self.last_heard.items()):
                bound = self.load_silence_s
                if rank not in self._channels:     # not connected yet: still importing torch
                    bound = max(bound, _CONNECT_SILENCE_S)
                if rank not in ready and now - heard_at > bound:
                    raise hung(rank, self._procs[rank].pid,
                               f"sent nothing for {now - heard_at:.1f} s while the group started "
                               f"(bound {bound:g} s)", phase, self.log_tail(rank))
            if now > deadline:
                late = min(set(range(self.world_size)) - set(ready))
                raise WorkerFailure(late, "TimeoutError",
                                    f"worker rank {late} was not ready in time (still loading?)",
                                    self.log_tail(late))
            try:
                ev = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(ev, GroupDied):
                raise ev.failure
            if isinstance(ev.msg, P.Ready):
                ready[ev.rank] = ev.msg
            elif isinstance(ev.msg, P.Failed):
                raise ev.msg.to_exception()
            elif isinstance(ev.msg, P.ProgressEvent) and on_progress is not None:
                on_progress(ev.msg)
        return [ready[r] for r in range(self.world_size)]

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> None:
        pidfds: dict[int, int] = {}
        for rank, p in enumerate(self._procs):
            with contextlib.suppress(OSError, AttributeError):
                pidfds[os.pidfd_open(p.pid)] = rank
        poll_s = None if len(pidfds) == len(self._procs) else 0.25
        running = set(range(len(self._procs)))
        try:
            while running:
                with self._lock:
                    channels = {ch.conn: r for r, ch in self._channels.items() if not ch.eof}
                ready = mp_wait([self._wake_r, *pidfds, *channels], timeout=poll_s)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if self._closed:
                    return
                for obj in ready:
                    if obj in channels:
                        self._read(channels[obj])
                for rank in sorted(running):
                    code = exit_status(self._procs[rank].pid)
                    if code is None:
                        continue
                    running.discard(rank)
                    for fd in [fd for fd, r in pidfds.items() if r == rank]:
                        os.close(fd)
                        del pidfds[fd]
                    if not (self._closing or self.failure is not None):
                        self._drain(rank)
                        self.fail(self._death_failure(rank, code))
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the group unwatched
            self.fail(WorkerFailure(-1, "SupervisorError", f"the worker supervisor failed: {exc!r}",
                                    traceback.format_exc()))
        finally:
            for fd in pidfds:
                os.close(fd)

    def _read(self, rank: int) -> None:
        ch = self._channels[rank]
        try:
            msg = ch.recv()
        except (EOFError, OSError):
            ch.eof = True
            return
        except Exception as exc:  # noqa: BLE001 - unpicklable message, lost shm segment...
            ch.eof = True
            self.fail(WorkerFailure(rank, "ProtocolError",
                                    f"cannot read a message from worker rank {rank}: {exc!r}",
                                    traceback.format_exc()))
            return
        phase = getattr(msg, "phase", None)
        if not isinstance(phase, str) or isinstance(msg, P.ProgressEvent):
            phase = self.last_heard.get(rank, (0.0, ""))[1]
        self.last_heard[rank] = (time.monotonic(), phase)
        if isinstance(msg, P.Heartbeat):
            return
        if isinstance(msg, P.RankStatus):
            with self._status_cv:
                self._status_replies.setdefault(msg.query_id, {})[rank] = msg
                self._status_cv.notify_all()
            return
        if isinstance(msg, P.Failed) and msg.request_id is None:
            self._startup_failed[rank] = msg
        self.events.put(RankMessage(rank, msg))

    def _drain(self, rank: int) -> None:
        """Read what a dead rank sent before it died (its Failed message, typically)."""
        ch = self._channels.get(rank)
        while ch is not None and not ch.eof:
            try:
                if not ch.poll(0):
                    break
            except (EOFError, OSError):
                break
            self._read(rank)

    def _death_failure(self, rank: int, code: int) -> WorkerFailure:
        failed = self._startup_failed.get(rank)
        if failed is not None:
            return failed.to_exception()
        pid = self._procs[rank].pid
        return WorkerFailure(rank, "WorkerDied", f"worker rank {rank} (pid {pid}) {describe_exit(code)}",
                             self.log_tail(rank))

    def log_tail(self, rank: int) -> str:
        try:
            with open(self.log_path(rank), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                lines = f.read().decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return ""
        return f"last lines of rank {rank}'s log:\n" + "\n".join(lines)

    def fail(self, failure: WorkerFailure) -> None:
        """Declare the group dead: kill every worker, then wake whoever waits on `events`."""
        with self._lock:
            if self.failure is not None or self._closing:
                return
            self.failure = failure
        self._kill()
        self.events.put(GroupDied(failure))

    # ------------------------------------------------------------------ use

    def send(self, rank: int, msg) -> None:
        """Send to one rank; a broken connection raises the group's failure (or names the rank)."""
        if not self.alive:
            raise self.failure or WorkerFailure(rank, "GroupClosed", "the worker group was closed")
        try:
            self._channels[rank].send(msg)
        except (OSError, EOFError, KeyError) as exc:
            deadline = time.monotonic() + 2.0
            while self.failure is None and time.monotonic() < deadline:
                time.sleep(0.02)   # the supervisor is about to report the death
            if self.failure is not None:
                raise self.failure from exc
            raise WorkerFailure(rank, type(exc).__name__, f"cannot reach worker rank {rank}: {exc}",
                                self.log_tail(rank)) from exc

    def query_status(self, timeout_s: float = 2.0) -> dict[int, P.RankStatus]:
        """Ask every rank for its RankStatus; ranks that do not answer in time are left out."""
        qid = next(self._query_ids)
        for rank in range(self.world_size):
            with contextlib.suppress(WorkerFailure):
                self.send(rank, P.StatusQuery(qid))
        deadline = time.monotonic() + timeout_s
        with self._status_cv:
            while len(self._status_replies.get(qid, {})) < self.world_size and self.alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._status_cv.wait(left)
            return self._status_replies.pop(qid, {})

    # ------------------------------------------------------------------ teardown

    def _kill(self) -> None:
        """Close the lifeline, SIGTERM every worker's process group, SIGKILL after a grace, reap."""
        with self._kill_lock:
            if self._reaped:
                return
            if self._lifeline_w is not None:
                os.close(self._lifeline_w)
                self._lifeline_w = None
            self._signal_all(signal.SIGTERM)
            self._signal_all(signal.SIGCONT)   # a stopped (SIGSTOP) rank takes its SIGTERM now
            deadline = time.monotonic() + TERM_GRACE_S
            while time.monotonic() < deadline and any(exit_status(p.pid) is None for p in self._procs):
                time.sleep(0.02)
            # Leaders are exited but not reaped, so their group ids are still ours: SIGKILL
            # reaches stragglers (grandchildren) too.
            self._signal_all(signal.SIGKILL)
            for p in self._procs:
                p.wait()
            self._reaped = True

    def _signal_all(self, sig: int) -> None:
        for p in self._procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, sig)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker and free everything; idempotent, safe from any thread."""
        with self._close_lock:
            if self._closed:
                return
            was_alive = self.alive
            self._closing = True
            if graceful and was_alive:
                for ch in list(self._channels.values()):
                    with contextlib.suppress(Exception):
                        ch.send(P.Shutdown())
                deadline = time.monotonic() + SHUTDOWN_GRACE_S
                while time.monotonic() < deadline and any(exit_status(p.pid) is None for p in self._procs):
                    time.sleep(0.02)
            self._kill()
            self._closed = True
            os.write(self._wake_w, b"x")
            self._stop_acceptor()
            for t in (self._supervisor, self._acceptor):
                if t is not None and t is not threading.current_thread():
                    t.join(timeout=5)
            for ch in self._channels.values():
                ch.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            sweep(self._token)
            shutil.rmtree(self._dir, ignore_errors=True)
            if self.failure is None:
                self.failure = WorkerFailure(-1, "GroupClosed", "the worker group was closed")
            self.events.put(GroupDied(self.failure))

    def _stop_acceptor(self) -> None:
        if self._listener is None:
            return
        if self._acceptor is not None and self._acceptor.is_alive():
            # Wake a blocked accept(): connect and hang up (its handshake then fails).
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(self._sock_path)
            self._acceptor.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()
