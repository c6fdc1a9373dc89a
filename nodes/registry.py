"""The process-wide registry of worker groups, keyed by EngineSpec.

ComfyUI caches the loader's output (an EngineHandle: a spec) across prompts; the live worker group
lives here. So:
- a second prompt with another seed or prompt finds its group warm (no reload);
- a group that died (a rank crashed, a GPU fell off) is closed and restarted on the next prompt;
- `/free` (ComfyUI's "Free model and node cache") and the Wan22MGRelease node end groups; a group
  that is generating is ended as soon as its request returns;
- starting a group on CUDA ends the idle groups that use any of the same GPUs first (two 14B groups
  on one GPU do not fit), so switching checkpoints or layouts never runs out of memory for that.

Thread use: prompts run on ComfyUI's execution thread; the routes (status, /free) run on the
event-loop thread and never block on a running request.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from wan_core.config import EngineSpec, GenerateRequest, GenerateResult
from wan_core.errors import WorkerFailure

from .checkpoints import hide_paths, shown_name

log = logging.getLogger(__name__)


def _gpu_set(spec: EngineSpec) -> frozenset:
    if spec.device != "cuda":
        return frozenset()
    ids = spec.parallel.gpu_ids or tuple(range(spec.parallel.num_gpus))
    return frozenset(ids)


@dataclass
class _Group:
    spec: EngineSpec
    client: object
    started: float
    load_s: float
    busy: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    phase: str = "idle"
    release_pending: bool = False


class EngineRegistry:
    def __init__(self, client_factory: Optional[Callable] = None) -> None:
        """`client_factory(spec, should_cancel=, on_progress=)`: wan_core.client.EngineClient."""
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self.starting: Optional[str] = None     # layout of the group being started, if any
        self._groups: dict[EngineSpec, _Group] = {}
        self._factory = client_factory
        self.loads = 0          # groups started since the server started (a reload counts)
        self.releases = 0

    # ------------------------------------------------------------------ start / reuse
    def _new_client(self, spec: EngineSpec, on_progress, should_cancel) -> object:
        factory = self._factory
        if factory is None:
            from wan_core.client import EngineClient as factory
        return factory(spec, should_cancel=should_cancel, on_progress=on_progress)

    def ensure(self, spec: EngineSpec, on_progress=None, should_cancel=None) -> _Group:
        """The live group for `spec`, started (and loaded: blocks) if needed. `on_progress` hears
        the 'load' phase when a start is needed; `should_cancel` can abort the start."""
        with self._start_lock:          # one start at a time; status() never waits for it
            with self._lock:
                group = self._groups.get(spec)
                if group is not None and (group.release_pending or not _alive(group.client)):
                    if not group.release_pending:
                        log.warning("Wan2.2 worker group for %s is gone; restarting it", spec.ckpt_dir)
                    self._drop(group)       # a release asked for earlier takes effect before reuse
                    group = None
                if group is not None:
                    return group
                for other in list(self._groups.values()):
                    if _gpu_set(other.spec) & _gpu_set(spec) and not other.busy.locked():
                        log.info("ending the idle Wan2.2 group on GPUs %s to make room",
                                 sorted(_gpu_set(other.spec)))
                        self._drop(other)
                self.starting = _describe(spec)
            if on_progress is not None:
                on_progress(_LoadPhase(f"loading the model on {self.starting}"))
            t0 = time.perf_counter()
            try:
                client = self._new_client(spec, on_progress, should_cancel)
            finally:
                self.starting = None
            group = _Group(spec=spec, client=client, started=time.time(), load_s=time.perf_counter() - t0)
            with self._lock:
                self._groups[spec] = group
                self.loads += 1
            log.info("Wan2.2 worker group ready in %.1f s: %s", group.load_s, _describe(spec))
            return group

    # ------------------------------------------------------------------ run
    def generate(self, spec: EngineSpec, request: GenerateRequest, on_progress=None,
                 should_cancel=None, preview: bool = False) -> GenerateResult:
        """Run `request` on the group of `spec` (started if needed); `preview`: ask rank 0 for a
        latent preview per denoise step (`EngineClient.generate`)."""
        while True:
            group = self.ensure(spec, on_progress, should_cancel)
            with group.busy:
                if self._groups.get(spec) is not group:
                    continue        # ended by /free between ensure() and here: start a new one
                try:
                    group.phase = "generating"
                    group.requests += 1
                    return group.client.generate(request, on_progress=on_progress,
                                                 should_cancel=should_cancel, preview=preview)
                except WorkerFailure:
                    if not _alive(group.client):
                        # The client killed a group left inconsistent (a rank died or got
                        # stranded): forget it now; the next prompt starts a new one.
                        group.release_pending = True
                    raise
                finally:
                    group.phase = "idle"
                    if group.release_pending:       # /free arrived while it ran
                        with self._lock:
                            self._drop(group)

    # ------------------------------------------------------------------ release
    def release(self, spec: Optional[EngineSpec] = None, wait: bool = True) -> int:
        """End the group of `spec` (all groups when None). wait=False (event-loop callers): idle
        groups end on a helper thread, busy ones as soon as their request returns."""
        with self._lock:
            targets = [g for s, g in self._groups.items() if spec is None or s == spec]
            for group in targets:
                group.release_pending = True
        if wait:
            for group in targets:
                with group.busy:
                    pass
                with self._lock:
                    self._drop(group)
        else:
            threading.Thread(target=self._release_when_idle, args=(targets,), daemon=True,
                             name="wan22mg-release").start()
        return len(targets)

    def _release_when_idle(self, targets: list) -> None:
        for group in targets:
            with group.busy:
                with self._lock:
                    self._drop(group)

    def _drop(self, group: _Group) -> None:
        if self._groups.get(group.spec) is group:
            del self._groups[group.spec]
            self.releases += 1
        try:
            group.client.close()
        except Exception:  # noqa: BLE001 - closing a dead group must never fail a prompt
            log.exception("closing the Wan2.2 worker group failed")

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        with self._lock:
            groups = list(self._groups.values())
            out = {"loads": self.loads, "releases": self.releases, "starting": self.starting,
                   "groups": []}
        for g in groups:
            try:
                ranks = g.client.status().as_dict()
            except Exception as exc:  # noqa: BLE001 - a status page must answer
                ranks = {"alive": _alive(g.client), "error": f"{type(exc).__name__}: {exc}"}
            out["groups"].append({
                "task": g.spec.task.value, "checkpoint": shown_name(g.spec.ckpt_dir),
                "files": {part: shown_name(path) for part, path in vars(g.spec.files).items() if path},
                "layout": _describe(g.spec),
                "device": g.spec.device, "phase": g.phase, "requests": g.requests,
                "load_s": round(g.load_s, 2), "started": g.started, "ranks": ranks,
                "plan": _plan_line(g.spec),
                "weights": hide_paths(_weights_line(g.client))})
        return out


@dataclass(frozen=True)
class _LoadPhase:
    """A progress report of our own while a group starts (the client reports none until ready)."""

    message: str
    phase: str = "load"
    step: Optional[int] = None
    total: Optional[int] = None


def _plan_line(spec: EngineSpec) -> str:
    """The memory plan's line for the loader's status (wan_core/memory_plan.py)."""
    from wan_core.memory_plan import status_line

    return status_line(spec)


def _alive(client) -> bool:
    alive = getattr(client, "alive", None)
    if alive is None:
        return True
    return bool(alive() if callable(alive) else alive)


def _describe(spec: EngineSpec) -> str:
    p = spec.parallel
    parts = [f"{p.num_gpus} {'GPU' if spec.device == 'cuda' else 'CPU rank'}{'s' if p.num_gpus > 1 else ''}"]
    if p.ulysses_size > 1:
        parts.append(f"ulysses {p.ulysses_size}")
    if p.cfg_parallel:
        parts.append("cfg-parallel")
    if p.dit_fsdp:
        parts.append("DiT FSDP")
    if p.t5_fsdp:
        parts.append("T5 FSDP")
    if p.t5_cpu:
        parts.append("T5 on CPU")
    if p.offload.value != "none":
        parts.append(f"offload {p.offload.value}")
    parts.append(spec.param_dtype.value)
    return ", ".join(parts)


REGISTRY = EngineRegistry()


def _weights_line(client) -> str:
    """How rank 0 read and holds each part, and its weight memory (WanEngine.weights_summary)."""
    try:
        ready = client.workers
    except Exception:  # noqa: BLE001 - a status page must answer
        return ""
    return next((r.weights for r in ready if getattr(r, "rank", None) == 0 and getattr(r, "weights", "")), "")
