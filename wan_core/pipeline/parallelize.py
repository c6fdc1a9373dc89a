"""Apply the parallel strategies to the models, once, at load (torchtitan's `parallelize.py` split).

Order for a DiT (style.md §4.2, P3): Ulysses (swap the self-attention modules and set the token
sharding) -> FSDP2 (shard per block, then the root) -> offload (blocks mode). The model code knows
none of this; `wan_core.distributed` knows no model class.

How the engine loads each way (see docs/architecture.md, "Parallelize"):
- dit_fsdp: `with loading.checkpoint.dit_on_meta(folder) as (model, source, _)` (the DiT on the meta
  device and its open `TensorSource`), then `parallelize_dit(model, dist, parallel, source=source,
  dtype=...)` inside the block: each rank reads only its rows.
- offload (experts or blocks): `load_dit(..., device="cpu")`, then `parallelize_dit`; for experts,
  `expert_provider` returns the `ExpertOffloader` that the denoise loop asks for each step's expert.
- otherwise: `load_dit(..., device=dist.device)`, then `parallelize_dit` (Ulysses only, or nothing).
"""
from __future__ import annotations

import logging
from typing import Hashable, Mapping, Optional

import torch
import torch.nn as nn

from ..config import TASKS, EngineSpec, GenerateRequest, GuideScale, OffloadMode, ParallelConfig, Task
from ..errors import CheckpointError, ConfigError
from ..distributed import fsdp as fsdp_
from ..distributed.context import DistContext
from ..distributed.offload import ExpertOffloader, apply_block_offload, validate_offload
from ..distributed.ulysses import apply_ulysses

log = logging.getLogger("wan_core.parallelize")


def validate(parallel: ParallelConfig, *, num_heads: int, moe: bool) -> None:
    """Every check of a parallel layout against a model, before anything is loaded."""
    parallel.validate(num_heads)
    validate_offload(parallel.offload, moe=moe, dit_fsdp=parallel.dit_fsdp)


def model_num_heads(task: "Task | str", ckpt_dir: str, files=None) -> int:
    """Attention heads of the task's DiT: `num_heads` of the checkpoint's config.json when it can
    be read (a fine-tune or a tiny test model may differ from the official figure), else the
    official figure; a missing checkpoint is reported later by the checkpoint check, by file."""
    from ..loading.detect import dit_folders, read_config

    task = Task.parse(task)
    if files is not None and files.any():
        from ..loading.parts import dit_config, resolve_parts

        try:
            folder = next(iter(resolve_parts(task, ckpt_dir or None, files).dits.values()))
            cfg = dit_config(folder)
        except (CheckpointError, ConfigError):
            return TASKS[task].num_heads
    else:
        folder = next(iter(dit_folders(ckpt_dir, task).values()))
        try:
            cfg = read_config(folder)
        except CheckpointError:
            return TASKS[task].num_heads
    heads = cfg.get("num_heads", TASKS[task].num_heads)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise CheckpointError(f"{folder / 'config.json'}: num_heads={heads!r} is not a positive "
                              "integer; re-download the file")
    return heads


def validate_spec(spec: EngineSpec) -> None:
    """`validate` for an EngineSpec (its task's head count and MoE-ness). Cheap (reads one
    config.json at most): every entry point (WanEngine, EngineClient before it starts a process,
    the CLI's precheck) calls it before any heavy work, so an impossible combination is a
    ConfigError at once."""
    task = Task.parse(spec.task)
    validate(spec.parallel, num_heads=model_num_heads(task, spec.ckpt_dir, spec.files), moe=TASKS[task].moe)


def validate_request(spec: EngineSpec, request: GenerateRequest) -> None:
    """Per-request parallel checks, before a request reaches a worker: cfg_parallel needs a
    guidance other than 1 (the request's, or the task's official one when it leaves it unset)."""
    if not spec.parallel.cfg_parallel:
        return
    from ..distributed.cfg_parallel import validate_guidance

    task = Task.parse(spec.task)
    guide = (GuideScale.parse(request.guide_scale) if request.guide_scale is not None
             else GuideScale(*TASKS[task].guide_scale))
    validate_guidance(True, guide)


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def parallelize_dit(model: nn.Module, dist: DistContext, parallel: ParallelConfig, *,
                    source=None, dtype: Optional[torch.dtype] = None,
                    param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Ulysses -> FSDP -> block offload, in place; returns the model.

    With dit_fsdp a model built on the meta device is sharded and then filled rank-locally from
    `source` (a TensorSource) in `dtype`; an already loaded model is sharded as it is.
    """
    if parallel.ulysses_size > 1:
        apply_ulysses(model, dist.ulysses_group, dist.ulysses_size, dist.ulysses_rank)
    if parallel.dit_fsdp:
        if _is_meta(model):
            if source is None:
                raise ValueError("a DiT built on the meta device needs `source` to load its shards")
            stats = fsdp_.shard_and_load(model, dist.fsdp_mesh, source, dist.device, dtype=dtype,
                                         param_dtype=param_dtype, what="DiT")
            log.info("rank %d: loaded its FSDP shard of the DiT (%d tensors, %.2f GB)", dist.rank,
                     stats.tensors, stats.bytes / 1e9)
        else:
            fsdp_.apply_fsdp(model, dist.fsdp_mesh, param_dtype=param_dtype)
    elif _is_meta(model):
        raise ValueError("a DiT on the meta device can only be loaded through dit_fsdp; load it first")
    if parallel.offload == OffloadMode.BLOCKS:
        apply_block_offload(model, dist.device)
    return model


def parallelize_t5(t5: nn.Module, dist: DistContext, parallel: ParallelConfig, *,
                   source=None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """t5_fsdp: shard per T5 block (root resharded after each encode too). t5_cpu is the
    pipeline's choice of device; nothing to apply here."""
    if not parallel.t5_fsdp:
        return t5
    if _is_meta(t5):
        if source is None:
            raise ValueError("a T5 encoder built on the meta device needs `source` to load its shards")
        fsdp_.shard_and_load(t5, dist.fsdp_mesh, source, dist.device, dtype=dtype, root_reshard=True,
                             what="T5 encoder")
    else:
        fsdp_.apply_fsdp(t5, dist.fsdp_mesh, root_reshard=True)
    return t5


class ResidentModels:
    """ModelProvider for models that stay where they are (no offload, or FSDP shards).

    Under FSDP, leaving an expert frees its gathered root parameters (they are kept between the
    steps of one expert, runtime.md §5.3).
    """

    def __init__(self, models: Mapping[Hashable, nn.Module]) -> None:
        self.models = dict(models)
        self.active: Optional[Hashable] = None

    def get(self, key: Hashable) -> nn.Module:
        if self.active is not None and key != self.active:
            fsdp_.release(self.models[self.active])
        self.active = key
        return self.models[key]

    def prefetch(self, key: Hashable) -> bool:
        return True


def expert_provider(models: Mapping[Hashable, nn.Module], dist: DistContext,
                    parallel: ParallelConfig):
    """What the denoise loop calls `get(expert)` on: an ExpertOffloader in offload='experts' mode
    (models loaded on the CPU), else ResidentModels."""
    if parallel.offload == OffloadMode.EXPERTS:
        return ExpertOffloader(models, dist.device)
    return ResidentModels(models)


__all__ = ["validate", "validate_spec", "validate_request", "model_num_heads", "parallelize_dit",
           "parallelize_t5", "expert_provider", "ResidentModels"]
