"""Joining a process group: for our own workers (a FileStore in the group's private folder) and
under torchrun (torchrun's own store: multi-host is torchrun's business, explicitly launched).

NCCL on CUDA (one visible GPU per worker, so always `cuda:<local index>`), gloo on CPU. The
DistContext built afterwards adds the Ulysses/CFG sub-groups and the gloo control group that
carries the per-step stop flag (`distributed/context.py`).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, Optional

from ..config import EngineSpec, GenerateRequest, GenerateResult, check_world_size
from ..errors import ConfigError

NCCL_WATCHDOG_ENV = {
    # A collective that fails or times out (PG_TIMEOUT_S) aborts its communicators and ends the
    # process, which the supervisor reports with the log (where NCCL's watchdog wrote why).
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # NCCL's own watchdog thread stuck in a CUDA call (a wedged driver) for this long: the
    # process is ended (default 480 s); the same order as the client's stop bound
    # (runtime/watchdog.py).
    "TORCH_NCCL_ENABLE_MONITORING": "1",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "120",
}
"""NCCL's watchdog settings, matched to the client's (`runtime/watchdog.py`); defaults a user may
override in the environment."""


def init_distributed(spec: EngineSpec, rank: int, world_size: int, *, store=None,
                     local_device: int = 0, timeout_s: float = 1800.0):
    """`init_process_group` for this rank, then the DistContext of `spec.parallel`.

    `store`: a `torch.distributed.Store` (our workers: a PrefixStore over the group's FileStore);
    None reads the torchrun environment (`env://`)."""
    import torch
    import torch.distributed as dist

    from ..distributed.context import DistContext

    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device 'cuda' was asked for but rank {rank} sees no GPU "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use device 'cpu' "
                "or check the GPU ids")
        for key, value in NCCL_WATCHDOG_ENV.items():   # read when the NCCL group is created
            os.environ.setdefault(key, value)
        torch.cuda.set_device(local_device)
        device = torch.device("cuda", local_device)
        backend = "nccl"
    elif spec.device == "cpu":
        device = torch.device("cpu")
        backend = "gloo"
    else:
        raise ConfigError(f"device {spec.device!r} is not supported; use 'cuda' or 'cpu'")
    kwargs = dict(backend=backend, rank=rank, world_size=world_size,
                  timeout=timedelta(seconds=timeout_s))
    if store is not None:
        kwargs["store"] = store
    else:
        kwargs["init_method"] = "env://"
    if device.type == "cuda":
        kwargs["device_id"] = device   # eager NCCL init: errors surface here, not mid-run
    dist.init_process_group(**kwargs)
    return DistContext.from_initialized(spec.parallel, device)


def run_under_torchrun(spec: EngineSpec, request: GenerateRequest,
                       on_progress: Optional[Callable] = None) -> Optional[GenerateResult]:
    """Run one request in a group launched by `torchrun --nproc-per-node N` (each launched process
    calls this; the CLI does under torchrun). Checks the layout, joins the launched group, loads
    the engine, generates; rank 0 returns the result (others None); every rank waits for the
    others before the group is destroyed. `on_progress(Progress)` hears rank 0's loading and
    denoising steps (other ranks never call it)."""
    import torch.distributed as dist

    from ..loading.facts import validate_spec
    from ..pipeline.engine import RunHooks, WanEngine

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError:
        raise ConfigError("run_under_torchrun needs RANK and WORLD_SIZE (start it with torchrun)") from None
    check_world_size(spec.parallel, world, fix=f"pass --nproc-per-node {spec.parallel.num_gpus} to torchrun")
    validate_spec(spec)   # every rank refuses an impossible layout before joining the group
    ctx = init_distributed(spec, rank, world, local_device=int(os.environ.get("LOCAL_RANK", rank)))
    try:
        progress = on_progress if rank == 0 else None
        engine = WanEngine(spec, ctx, on_progress=progress)
        result = engine.generate(request, RunHooks(on_progress=progress))
        ctx.barrier()   # rank 0 may still be decoding: nobody tears the group down under it
        return result
    finally:
        dist.destroy_process_group()
