"""Apply the parallel strategies to the models, once, at load (torchtitan's `parallelize.py` split).

Order for a DiT: Ulysses (swap the self-attention modules and set the token
sharding) -> FSDP2 (shard per block, then the root) -> offload (blocks mode). The model code knows
none of this; `wan_core.distributed` knows no model class. Composition only: whether a layout is
possible is decided by `config.py` (its rules) and `loading.facts.validate_spec` (against the model).

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

from ..config import OffloadMode, ParallelConfig
from ..distributed import fsdp as fsdp_
from ..distributed.context import DistContext
from ..distributed.offload import ExpertOffloader, apply_block_offload
from ..distributed.ulysses import apply_ulysses

log = logging.getLogger("wan_core.parallelize")


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
    steps of one expert).
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


__all__ = ["parallelize_dit", "parallelize_t5", "expert_provider", "ResidentModels"]
