"""Process plumbing of a worker group: child environments, the spawning thread, exit statuses,
and the sweep of what dead clients left behind. No torch.distributed, no messages.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

from ..config import EngineSpec, ParallelConfig
from ..errors import ConfigError
from ..loading.facts import validate_spec
from ..memory_plan import check_load
from .dist_init import NCCL_WATCHDOG_ENV
from .protocol import AUTHKEY_ENV
from .transport import sweep

PACK_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the `wan_core` package (the node pack's root)."""
OWNER_FILE = "owner.json"
"""In each group's private folder: who started the group (pid, start time, token, worker pids)."""

LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
"""gloo's pair sockets and NCCL's bootstrap listen on the loopback interface only (by default they
bind the address the host name resolves to, often the machine's public one). Workers of one group
share one machine, so nothing is lost; NCCL's data paths on one node (P2P, NVLink, SHM) use no
sockets at all."""
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "GROUP_WORLD_SIZE")


def physical_gpu_ids(parallel: ParallelConfig, parent_visible: Optional[str],
                     device_count: Callable[[], int]) -> list[str]:
    """CUDA_VISIBLE_DEVICES value of each rank: `parallel.gpu_ids` (or 0..n-1) are indices into
    the GPUs the parent sees, mapped through the parent's own CUDA_VISIBLE_DEVICES when it has
    one (ComfyUI's --cuda-device narrows it), so a worker never sees a GPU its parent did not."""
    wanted = list(parallel.gpu_ids) if parallel.gpu_ids is not None else list(range(parallel.num_gpus))
    if parent_visible is not None:
        visible = [v.strip() for v in parent_visible.split(",") if v.strip()]
        where = f"CUDA_VISIBLE_DEVICES={parent_visible!r}"
    else:
        visible = [str(i) for i in range(device_count())]
        where = "this machine"
    bad = [g for g in wanted if not 0 <= g < len(visible)]
    if bad:
        raise ConfigError(
            f"GPU index {bad[0]} is not available: {where} shows {len(visible)} GPU(s) "
            f"(indices 0..{len(visible) - 1}); lower num_gpus or change gpu_ids={wanted}")
    return [visible[g] for g in wanted]


def check_gpus_visible(parallel: ParallelConfig, visible: int, cuda_visible: Optional[str]) -> None:
    """ConfigError unless `visible` CUDA GPUs (what this process sees: torch.cuda.device_count(),
    0 without CUDA) cover `parallel`: num_gpus of them, and every id of `gpu_ids`.
    `cuda_visible`: this process's CUDA_VISIBLE_DEVICES, quoted in the message."""
    where = ("CUDA_VISIBLE_DEVICES is not set" if cuda_visible is None
             else f"CUDA_VISIBLE_DEVICES={cuda_visible!r}")
    if visible == 0:
        raise ConfigError(f"device 'cuda' with num_gpus={parallel.num_gpus}, but this process sees no "
                          f"CUDA GPU ({where}; torch {_torch_cuda_words()}); use device 'cpu', or make "
                          "the GPUs visible")
    if parallel.num_gpus > visible:
        raise ConfigError(f"num_gpus={parallel.num_gpus}, but only {visible} CUDA GPU(s) are visible "
                          f"({where}); use num_gpus <= {visible} (ulysses_size and cfg_parallel to "
                          "match) or make more GPUs visible")
    bad = [g for g in (parallel.gpu_ids or ()) if not 0 <= g < visible]
    if bad:
        raise ConfigError(f"gpu_ids={list(parallel.gpu_ids)} names GPU {bad[0]}, but only {visible} CUDA "
                          f"GPU(s) are visible (ids 0..{visible - 1}; {where}); pick ids below {visible}")


def _torch_cuda_words() -> str:
    import torch

    if torch.version.cuda is None:
        return f"{torch.__version__} is a CPU-only build"
    return f"{torch.__version__} (CUDA {torch.version.cuda}) finds no device"


def check_start(spec: EngineSpec) -> None:
    """What a group start checks in the parent before it creates anything (folder, store,
    process): the parallel layout against the model (`loading.facts.validate_spec`), on
    CUDA that the GPUs it asks for are visible, and the memory guard (`memory_plan.check_load`:
    the weights and the smallest video must fit). Raises ConfigError."""
    validate_spec(spec)
    if spec.device.startswith("cuda"):
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check_gpus_visible(spec.parallel, visible, os.environ.get("CUDA_VISIBLE_DEVICES"))
    check_load(spec)


class Spawner:
    """A long-lived daemon thread that runs every Popen: PR_SET_PDEATHSIG follows the *thread*
    that created the child, so a child spawned from a short-lived thread would be killed when
    that thread ends (docs/architecture.md, Runtime: Orphans)."""

    _lock = threading.Lock()
    _queue: Optional[queue.SimpleQueue] = None

    @classmethod
    def call(cls, fn):
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.SimpleQueue()
                threading.Thread(target=cls._run, args=(cls._queue,), name="wan-spawner",
                                 daemon=True).start()
        fut: Future = Future()
        cls._queue.put((fn, fut))
        return fut.result()

    @staticmethod
    def _run(q: queue.SimpleQueue) -> None:
        while True:
            fn, fut = q.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)


def exit_status(pid: int) -> Optional[int]:
    """Popen-style return code of an exited child without reaping it (so its pid, and the id of
    its process group, cannot be reused before we SIGKILL that group); None while it runs."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def proc_start_time(pid: int) -> Optional[int]:
    """Start time of a live process (clock ticks since boot), to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def sweep_stale_groups(max_age_unowned_s: float = 60.0) -> int:
    """Clean up after clients that died without closing (SIGKILL, crash): for every private
    folder whose owner process is gone, SIGKILL any worker still running (recognised by its
    command line), unlink its shared-memory segments and remove the folder. Returns how many
    folders were removed. Run at every group start (docs/architecture.md, Runtime: Orphans)."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob("wan_core-*"):
        try:
            removed += _sweep_folder(folder, max_age_unowned_s)
        except (OSError, ValueError, KeyError, TypeError):
            continue   # someone else's, or half-written: never fail a start over it
    return removed


def _sweep_folder(folder: Path, max_age_unowned_s: float) -> int:
    owner_file = folder / OWNER_FILE
    if not owner_file.exists():   # a folder being created right now has no owner file yet
        if time.time() - folder.stat().st_mtime > max_age_unowned_s:
            shutil.rmtree(folder, ignore_errors=True)
            return 1
        return 0
    owner = json.loads(owner_file.read_text())
    if proc_start_time(int(owner["pid"])) == owner["start"]:
        return 0   # its client is alive
    token = str(owner["token"])
    for pid in owner.get("workers", []):
        try:
            with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
                ours = token.encode() in f.read()
        except OSError:
            continue
        if ours:
            with contextlib.suppress(OSError):
                os.killpg(int(pid), signal.SIGKILL)
    sweep(token)
    shutil.rmtree(folder, ignore_errors=True)
    return 1


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (often the kernel's out-of-memory killer: check `dmesg`)" if -code == signal.SIGKILL else ""
        return f"was killed by {name} (exit code {code}){hint}"
    return f"exited with code {code}"


def child_envs(spec: EngineSpec, authkey: bytes) -> list[dict]:
    """The environment of each rank's process: the parent's, minus torchrun's variables, plus the
    pack root on PYTHONPATH (workers import `wan_core` top-level, like the parent), one physical
    GPU, OMP threads split between the ranks, unbuffered output and the listener's authkey."""
    n = spec.parallel.num_gpus
    base = {k: v for k, v in os.environ.items()
            if k not in _TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")}
    base["PYTHONPATH"] = os.pathsep.join(
        [str(PACK_ROOT)] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p])
    base["PYTHONUNBUFFERED"] = "1"
    base.update(LOOPBACK_ENV)     # forced, not defaulted: a single-machine group never listens outside
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    base[AUTHKEY_ENV] = authkey.hex()
    if spec.device == "cuda":
        import torch

        gpus = physical_gpu_ids(spec.parallel, os.environ.get("CUDA_VISIBLE_DEVICES"),
                                torch.cuda.device_count)
        # ComfyUI's cuda_malloc.py puts cudaMallocAsync in the environment; workers choose.
        base["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        for key, value in NCCL_WATCHDOG_ENV.items():
            base.setdefault(key, value)
    else:
        gpus = [""] * n   # CPU ranks never touch a GPU
    return [dict(base, CUDA_VISIBLE_DEVICES=gpus[r]) for r in range(n)]
