"""EngineClient: a persistent worker group for one `EngineSpec`, used from the ComfyUI process or
the CLI. The models are loaded once when the client starts and stay resident between requests.

    client = EngineClient(EngineSpec(Task.T2V_A14B, "/ckpt/Wan2.2-T2V-A14B",
                                     parallel=ParallelConfig(num_gpus=2, ulysses_size=2)))
    result = client.generate(GenerateRequest(prompt="..."), on_progress=print,
                             should_cancel=lambda: interrupted)
    client.close()

One request runs at a time (`generate` blocks; concurrent callers queue on a lock). The spec is
fixed for the client's lifetime: to change it (other GPUs, other checkpoint, FSDP on/off...)
`close()` this client and start a new one.

Failures: a rank that raises makes `generate` raise `WorkerFailure` (rank, exception type,
message, traceback; `user_error` for a `WanEngineError` such as a bad input). When every rank
raised the same way the group stays usable; when only some did (the others are stuck in a
collective) or a worker died, the whole group is killed and `alive` turns False: start a new
client. A cancelled request raises `Cancelled(step)` and leaves the group ready for the next.

Hangs: a watchdog (`runtime/watchdog.py`) ends the group when a rank falls silent (no heartbeat
for max(30 s, 3 x the longest step)), does not acknowledge a Cancel within 10 s, or does not stop
after one; `generate` then raises `WorkerFailure(rank, "WorkerHung", ...)` naming the rank and
what it was doing, and `alive` turns False. Bounds: `EngineClient(watchdog=WatchdogConfig(...))`
or the WAN_CORE_* variables of `WatchdogConfig.from_env`.
"""
from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .config import EngineSpec, GenerateRequest, GenerateResult, validate_request
from .memory_plan import check_fits
from .errors import Cancelled, WorkerFailure
from .runtime import protocol as P
from .runtime.group import GroupDied, WorkerGroup
from .runtime.watchdog import Watchdog, WatchdogConfig

ERROR_GRACE_S = 5.0
"""After one rank raised, how long the others get to finish or raise too before the group is
declared stuck and killed (a rank that left the run strands its peers in the next collective)."""
_POLL_S = 0.1


@dataclass
class GroupStatus:
    """What `EngineClient.status()` reports (the ComfyUI status route serves `as_dict()`)."""

    alive: bool
    busy: bool
    ranks: list = field(default_factory=list)   # protocol.RankStatus per rank
    failure: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _copy(f: WorkerFailure) -> WorkerFailure:
    """A fresh exception each time a stored failure is raised (tracebacks would pile up)."""
    return WorkerFailure(f.rank, f.exc_type, f.message, f.traceback, user_error=f.user_error)


class EngineClient:
    """Starts `spec.parallel.num_gpus` worker processes and loads the engine on each (blocks until
    every rank is ready). Raises `ConfigError` for an impossible spec before any process starts
    (`runtime.processes.check_start`: the parallel layout against the model, the GPUs visible on
    CUDA), `WorkerFailure` naming the
    rank when a rank cannot start (e.g. a `CheckpointError`), `Cancelled` when `should_cancel()`
    turns true while loading. `on_progress` hears rank 0's loading steps (phase "load"); an
    exception it raises aborts the start."""

    def __init__(self, spec: EngineSpec, *, start_timeout_s: float = 1800.0,
                 should_cancel: Optional[Callable[[], bool]] = None,
                 on_progress: Optional[Callable[[P.ProgressEvent], None]] = None,
                 watchdog: Optional[WatchdogConfig] = None) -> None:
        self.spec = spec
        config = watchdog or WatchdogConfig.from_env()
        self._group = WorkerGroup(spec, start_timeout_s=start_timeout_s, should_cancel=should_cancel,
                                  on_progress=on_progress, heartbeat_s=config.heartbeat_s,
                                  load_silence_s=config.load_silence_s)
        self._watchdog = Watchdog(self._group.world_size, self._group.pids, config)
        self._job_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active: Optional[int] = None
        self._cancel_requested = False
        atexit.register(self.close)

    @property
    def alive(self) -> bool:
        """False once a worker died or the client was closed: start a new client."""
        return self._group.alive

    @property
    def workers(self) -> list[P.Ready]:
        """What each rank reported when it became ready (pid, device, versions, memory, load time)."""
        return list(self._group.workers)

    @property
    def pids(self) -> list[int]:
        return self._group.pids

    def generate(self, request: GenerateRequest, on_progress: Optional[Callable[[P.ProgressEvent], None]] = None,
                 should_cancel: Optional[Callable[[], bool]] = None, *, preview: bool = False) -> GenerateResult:
        """Run one request on the group; blocks until it is done.

        `on_progress(event)` is called in this thread as rank 0 reports (fields of
        `pipeline.progress.Progress`: phase, step, total, elapsed_s, message, and with
        `preview=True` a uint8 [H, W, 3] latent preview on each denoise step); if it raises (e.g.
        ComfyUI's interrupt exception), the run is cancelled and that exception is re-raised once
        every rank stopped. `should_cancel()` is polled about every 100 ms; when true, every rank
        stops at the same step boundary and `Cancelled(step)` is raised. A request the layout
        cannot run (cfg_parallel with a guidance of 1), or whose estimated memory exceeds the
        GPUs' (`memory_plan.check_fits`), raises `ConfigError` before it is sent.
        """
        validate_request(self.spec, request)
        check_fits(self.spec, request)
        with self._job_lock:
            if not self.alive:
                raise _copy(self._group.failure)
            self._drain_events()
            rid = next(self._ids)
            self._cancel_requested = False
            self._active = rid
            try:
                for rank in range(self._group.world_size):
                    self._group.send(rank, P.Generate(rid, request, preview=preview))
                return self._await(rid, on_progress, should_cancel)
            finally:
                self._active = None

    def cancel(self) -> None:
        """Ask the running request (if any) to stop at the next step boundary; thread-safe."""
        if self._active is not None:
            self._cancel_requested = True

    def status(self, timeout_s: float = 2.0) -> GroupStatus:
        """Per-rank phase and memory (CUDA: allocated/peak/reserved/free/total bytes), answered by
        the workers even while they run a request."""
        if not self.alive:
            failure = self._group.failure
            return GroupStatus(alive=False, busy=False, failure=str(failure) if failure else None)
        replies = self._group.query_status(timeout_s)
        ranks = [replies.get(r) or P.RankStatus(rank=r, pid=self.pids[r], phase="not answering",
                                                device=self._group.workers[r].device)
                 for r in range(self._group.world_size)]
        return GroupStatus(alive=self.alive, busy=self._active is not None, ranks=ranks)

    def close(self) -> None:
        """Stop the workers and free their memory. Idempotent; also runs at interpreter exit."""
        atexit.unregister(self.close)
        # A busy group would not read Shutdown before its run ends: stop it at once.
        self._group.close(graceful=self._active is None)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _drain_events(self) -> None:
        while True:
            try:
                ev = self._group.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, GroupDied):
                raise _copy(ev.failure)

    def _await(self, rid: int, on_progress, should_cancel) -> GenerateResult:
        world = self._group.world_size
        pending = set(range(world))
        result = None
        stopped_step: Optional[int] = None
        errors: list[P.Failed] = []
        first_error_at = 0.0
        interrupt: Optional[BaseException] = None   # raised by on_progress or Ctrl-C
        cancel_sent = False
        watchdog = self._watchdog
        watchdog.begin(time.monotonic())
        while pending:
            try:
                if not cancel_sent and (interrupt is not None or self._cancel_requested
                                        or (should_cancel is not None and should_cancel())):
                    self._send_cancel(rid)
                    watchdog.cancel_sent(time.monotonic())
                    cancel_sent = True
                if errors and time.monotonic() - first_error_at > ERROR_GRACE_S:
                    failure = errors[0].to_exception()
                    self._group.fail(failure)   # the others are stranded in a collective
                    raise _copy(failure)
                hung = self._check_watchdog()
                if hung is not None:
                    raise hung
                try:
                    ev = self._group.events.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
            except KeyboardInterrupt as exc:
                if interrupt is not None:   # a second one: stop waiting for a clean stop
                    self._group.fail(WorkerFailure(-1, "KeyboardInterrupt", "interrupted while stopping"))
                    raise
                interrupt = exc
                continue
            if isinstance(ev, GroupDied):
                raise _copy(ev.failure)
            msg = ev.msg
            if getattr(msg, "request_id", None) != rid:
                continue
            if isinstance(msg, P.CancelAck):
                watchdog.acked(ev.rank)
                continue
            if isinstance(msg, P.ProgressEvent):
                if msg.phase == "denoise" and ev.rank == 0:
                    watchdog.step_seen(time.monotonic(), msg.step)
                if on_progress is not None and interrupt is None:
                    try:
                        on_progress(msg)
                    except BaseException as exc:  # noqa: BLE001 - re-raised after a clean stop
                        interrupt = exc
                continue
            pending.discard(ev.rank)
            watchdog.done(ev.rank)
            if isinstance(msg, P.Finished) and ev.rank == 0:
                result = msg.result
            elif isinstance(msg, P.Stopped):
                stopped_step = msg.step
            elif isinstance(msg, P.Failed):
                if not errors:
                    first_error_at = time.monotonic()
                errors.append(msg)
        if errors:   # every rank finished: the group is still consistent
            raise min(errors, key=lambda e: e.rank).to_exception()
        if interrupt is not None:
            raise interrupt
        if result is None:
            raise Cancelled(stopped_step)
        return result

    def _send_cancel(self, rid: int) -> None:
        """Cancel to every rank: rank 0's flag decides the stop (broadcast at the next step
        boundary); every rank acknowledges at once, which tells the watchdog it is alive."""
        for rank in range(self._group.world_size):
            try:
                self._group.send(rank, P.Cancel(rid))
            except WorkerFailure:
                if rank == 0 or not self.alive:
                    raise

    def _check_watchdog(self) -> Optional[WorkerFailure]:
        """The watchdog's verdict on the running request; on one, the group is ended first."""
        watchdog = self._watchdog
        for rank, (heard_at, phase) in list(self._group.last_heard.items()):
            watchdog.heard(rank, heard_at, phase)
        failure = watchdog.check(time.monotonic())
        if failure is None:
            return None
        failure.traceback = self._group.log_tail(failure.rank)
        self._group.fail(failure)
        return _copy(self._group.failure or failure)
