"""One rank of a worker group: `python -m wan_core.runtime.worker --rank R ...` (started by
`runtime.group.WorkerGroup`, never by hand).

Order matters: the lifeline watchdog and the parent-death signal come first (nothing may outlive
the client), then the control connection (Hello -> WorkerConfig), then the process group and the
engine, loaded once. While idle the rank blocks on its own connection, never in a collective
(collectives time out). A reader thread takes every message so that a cancel
or a status query is served while the main thread runs the engine, and a heartbeat thread tells the
client every `heartbeat_s` that the process is alive and what it is doing (the client's watchdog,
`runtime/watchdog.py`, ends a group whose rank falls silent).

Rendezvous: a `FileStore` in the group's private (0700) folder; gloo and NCCL's bootstrap are bound
to the loopback interface by the environment the client gives (`processes.child_envs`): nothing a
worker opens listens beyond this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client
from typing import Callable, Optional

from ..errors import Cancelled
from . import protocol as P
from .lifeline import (EXIT_PARENT_GONE, die_with_parent, lifeline_closed, take_sigterm,
                       watch_lifeline)
from .transport import Channel, sweep


def memory_stats(device) -> dict:
    """Resident set size of this process, and the CUDA allocator's counters on a GPU."""
    stats: dict = {}
    try:
        with open("/proc/self/statm") as f:
            stats["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    if device is not None and device.type == "cuda":
        import torch

        stats.update(allocated_bytes=torch.cuda.memory_allocated(device),
                     peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
                     reserved_bytes=torch.cuda.memory_reserved(device))
        free, total = torch.cuda.mem_get_info(device)
        stats.update(free_bytes=free, total_bytes=total)
    return stats


def main_thread_location(thread_id: Optional[int]) -> str:
    """'in torch.distributed all_to_all_single, from wan_core/distributed/ulysses.py:39' or
    'at wan_core/models/dit.py:120 (forward)': where the thread is, from its Python stack (no
    source lines read). '' when unknown."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return ""
    collective = ours = None
    while frame is not None and ours is None:
        code = frame.f_code
        path = code.co_filename.replace(os.sep, "/")
        if collective is None and path.endswith("torch/distributed/distributed_c10d.py"):
            collective = code.co_name
        elif "/wan_core/" in path:
            ours = f"{path[path.rindex('/wan_core/') + 1:]}:{frame.f_lineno}"
            name = code.co_name
        frame = frame.f_back
    if collective is not None:
        return f"in torch.distributed {collective}" + (f", from {ours}" if ours else "")
    return f"at {ours} ({name})" if ours else ""


def _describe_device(device) -> str:
    if device is None or device.type != "cuda":
        return "cpu"
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return f"{device} ({props.name}{', GPU-' + str(uuid) if uuid else ''}; CUDA_VISIBLE_DEVICES={visible})"


def _versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        try:
            v["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 - informational only
            pass
    return v


class Worker:
    def __init__(self, rank: int, cfg: P.WorkerConfig, channel: Channel,
                 on_parent_gone: Optional[Callable[[], None]] = None) -> None:
        self.rank = rank
        self.on_parent_gone = on_parent_gone
        self.cfg = cfg
        self.channel = channel
        self._phase = "starting"
        self._phase_at = time.monotonic()
        self.device = None
        self.engine = None
        self.jobs: "queue.SimpleQueue[Optional[P.Generate]]" = queue.SimpleQueue()
        self._cancel: dict[int, threading.Event] = {}

    @property
    def phase(self) -> str:
        """What the main thread is doing ('loading: ...', 'generating: denoise 3/40', 'idle')."""
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value != self._phase:
            self._phase, self._phase_at = value, time.monotonic()

    def heartbeat_loop(self) -> None:
        """Every `heartbeat_s`: a Heartbeat, from this thread whatever the main thread does (a
        kernel, a collective). Only a stopped or frozen process falls silent. While it works, the
        phase says where the main thread is: the torch.distributed collective it waits in, if
        any, and the innermost line of the engine (what the watchdog's message quotes)."""
        main_id = threading.main_thread().ident
        while True:
            time.sleep(self.cfg.heartbeat_s)
            phase = self._phase
            if phase.startswith(("generating", "loading")):
                where = main_thread_location(main_id)
                phase = f"{phase} ({where})" if where else phase
            self._send(P.Heartbeat(rank=self.rank, phase=phase,
                                   phase_s=time.monotonic() - self._phase_at))

    # -- messages (reader thread) ---------------------------------------------------------------

    def read_loop(self) -> None:
        while True:
            try:
                msg = self.channel.recv()
            except (EOFError, OSError):
                # The client hung up: it died (often noticed here first, before the lifeline
                # thread runs: clean up for it) or it is tearing the group down.
                if self.on_parent_gone is not None:
                    self.on_parent_gone()
                self._exit(EXIT_PARENT_GONE)
            except Exception:  # noqa: BLE001 - an unreadable message: die loudly, the client reports it
                traceback.print_exc()
                self._exit(1)
            if isinstance(msg, P.Generate):
                self._cancel[msg.request_id] = threading.Event()
                self.jobs.put(msg)
            elif isinstance(msg, P.Cancel):
                event = self._cancel.get(msg.request_id)
                if event is not None:
                    event.set()
                self._send(P.CancelAck(request_id=msg.request_id, rank=self.rank, phase=self.phase))
            elif isinstance(msg, P.StatusQuery):
                self._send(P.RankStatus(rank=self.rank, pid=os.getpid(), phase=self.phase,
                                        device=str(self.device or "?"),
                                        memory=self._memory(), query_id=msg.query_id))
            elif isinstance(msg, P.Shutdown):
                self.jobs.put(None)

    def _memory(self) -> dict:
        try:
            return memory_stats(self.device)
        except Exception as exc:  # noqa: BLE001 - a status reply must not kill the reader
            return {"error": repr(exc)}

    def _send(self, msg) -> None:
        try:
            self.channel.send(msg)
        except (OSError, EOFError):
            self._exit(EXIT_PARENT_GONE)

    def _exit(self, code: int) -> None:
        sweep(self.cfg.shm_prefix)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # -- main thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Join the group and load the engine; raises what went wrong."""
        import torch.distributed as dist

        from ..pipeline.engine import WanEngine
        from .dist_init import init_distributed

        self.phase = "joining the process group"
        store = dist.FileStore(self.cfg.store_path, self.cfg.world_size)
        store.set_timeout(_td(self.cfg.pg_timeout_s))
        ctx = init_distributed(self.cfg.spec, self.rank, self.cfg.world_size,
                               store=dist.PrefixStore(self.cfg.store_prefix, store),
                               timeout_s=self.cfg.pg_timeout_s)
        self.device = ctx.device
        self.phase = "loading"

        def on_load_progress(p) -> None:
            self.phase = f"loading: {p.message or p.phase}"
            if self.rank == 0:   # request id 0: the start-up
                self._send(P.ProgressEvent.from_progress(0, p))

        self.engine = WanEngine(self.cfg.spec, ctx, on_progress=on_load_progress)

    def serve(self) -> None:
        while True:
            self.phase = "idle"
            job = self.jobs.get()
            if job is None:
                return
            self._send(self.run(job))

    def run(self, job: P.Generate):
        from ..pipeline.engine import RunHooks

        rid = job.request_id
        stop = self._cancel[rid]

        def on_progress(p) -> None:
            step = f" {p.step}/{p.total}" if p.total else ""
            self.phase = f"generating: {p.phase}{step}"
            if self.rank == 0:
                self._send(P.ProgressEvent.from_progress(rid, p))

        self.phase = "generating"
        try:
            hooks = RunHooks(on_progress=on_progress, should_stop=stop.is_set,
                             want_preview=job.preview and self.rank == 0)   # only rank 0 reports
            result = self.engine.generate(job.request, hooks)
            return P.Finished(rid, self.rank, result if self.rank == 0 else None)
        except Cancelled as exc:
            return P.Stopped(rid, self.rank, exc.step)
        except Exception as exc:  # noqa: BLE001 - reported to the client with its traceback
            traceback.print_exc()
            return P.Failed.from_exception(self.rank, rid, exc)
        finally:
            self._cancel.pop(rid, None)


def _td(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def _shutdown_process_group(timeout_s: float = 2.0) -> None:
    """destroy_process_group can block when peers are gone; give it a moment, not more."""
    def destroy() -> None:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - we exit right after
            pass

    t = threading.Thread(target=destroy, daemon=True)
    t.start()
    t.join(timeout_s)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wan_core.runtime.worker")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--control", required=True, help="AF_UNIX path of the client's listener")
    ap.add_argument("--lifeline-fd", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, required=True)
    ap.add_argument("--token", required=True, help="the group's shared-memory name prefix")
    args = ap.parse_args(argv)
    own_shm = f"{args.token}r{args.rank}_"

    def orphaned() -> None:
        # The client died or exec'd (and cannot clean up), or it is tearing the group down (and
        # will not mind). The group's segments and private folder go, from every rank that gets
        # here first: no later sweep is needed.
        sweep(args.token)
        folder = os.path.dirname(os.path.abspath(args.control))
        if os.path.basename(folder).startswith("wan_core-"):
            shutil.rmtree(folder, ignore_errors=True)

    def terminated() -> None:
        # SIGTERM: the parent-death signal or the client's teardown (both close the lifeline: the
        # group's files go), or someone else's (the client reports this rank's death with its
        # log: leave the folder).
        if lifeline_closed(args.lifeline_fd, wait_s=1.0):
            orphaned()
        else:
            sweep(own_shm)

    take_sigterm(terminated)    # first: every thread started later inherits the blocked SIGTERM
    watch_lifeline(args.lifeline_fd, before_exit=orphaned)
    die_with_parent(args.parent_pid, signal.SIGTERM, before_exit=orphaned)
    authkey = bytes.fromhex(os.environ.pop(P.AUTHKEY_ENV))
    channel = Channel(Client(args.control, family="AF_UNIX", authkey=authkey), shm_prefix=own_shm)
    channel.send(P.Hello(rank=args.rank, pid=os.getpid()))
    cfg: P.WorkerConfig = channel.recv()
    worker = Worker(args.rank, cfg, channel, on_parent_gone=orphaned)
    threading.Thread(target=worker.read_loop, name="wan-reader", daemon=True).start()
    threading.Thread(target=worker.heartbeat_loop, name="wan-heartbeat", daemon=True).start()

    t0 = time.perf_counter()
    try:
        worker.start()
    except BaseException as exc:  # noqa: BLE001 - reported, then this rank exits
        traceback.print_exc()
        worker._send(P.Failed.from_exception(args.rank, None, exc))
        worker._exit(1)
    worker.phase = "idle"
    worker._send(P.Ready(rank=args.rank, pid=os.getpid(), device=_describe_device(worker.device),
                         versions=_versions(), memory=worker._memory(),
                         load_s=time.perf_counter() - t0,
                         weights=getattr(worker.engine, "weights_summary", "")))
    worker.serve()
    _shutdown_process_group()
    worker._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
