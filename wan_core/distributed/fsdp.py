"""FSDP2 weight sharding for inference (torchtitan `apply_fsdp` shape).

- `apply_fsdp(model, mesh)`: `fully_shard` per transformer block (`reshard_after_forward=True`:
  memory is why we shard), then the root (`False`: embeddings and head are needed at the start and
  end of every forward). Block i prefetches block i+1's all-gather explicitly: the attention kernel
  reads `k_lens` on the host, a device sync that stops the CPU from running ahead and issuing the next
  all-gather early (torchtitan's reason for explicit prefetch).
- `MixedPrecisionPolicy(param_dtype=...)` only when the compute dtype differs from the stored one,
  never casting forward inputs: the DiT keeps its residual stream and modulation in float32.
- Rank-local loading: build on the meta device, `apply_fsdp`, `to_empty(device)`, then
  `load_sharded` copies only this rank's rows of each tensor from the checkpoint (`get_slice` on
  mmap'd safetensors), so host RAM never holds N full copies. `ReadCounter` wraps a
  source and counts what was read (a test proves the MoE switch under FSDP reads nothing).
- Both MoE experts are sharded on the same mesh and stay resident (each rank holds 1/N of both).

Run under `torch.no_grad()`, never `torch.inference_mode()` (a first forward in
inference mode breaks every later no_grad forward of an FSDP2 module).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError


def _fsdp_api():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    return fully_shard, MixedPrecisionPolicy


def _mp_policy(param_dtype: Optional[torch.dtype]):
    _, MixedPrecisionPolicy = _fsdp_api()
    return MixedPrecisionPolicy(param_dtype=param_dtype, cast_forward_inputs=False)


def shard_blocks(model: nn.Module, blocks: Iterable[nn.Module], mesh, *,
                 param_dtype: Optional[torch.dtype] = None, prefetch: int = 1,
                 root_reshard: bool = False) -> nn.Module:
    """fully_shard each of `blocks`, then `model` as the root unit; returns model (in place).

    `root_reshard`: free the root's gathered parameters after each forward too (the T5 encoder,
    whose root holds a 2 GB embedding and runs once per request); the DiT keeps them (every step).
    """
    fully_shard, _ = _fsdp_api()
    mp = _mp_policy(param_dtype)
    blocks = list(blocks)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True, mp_policy=mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=root_reshard, mp_policy=mp)
    if prefetch > 0:
        for i, block in enumerate(blocks[:-1]):
            block.set_modules_to_forward_prefetch(blocks[i + 1: i + 1 + prefetch])
    return model


def apply_fsdp(model: nn.Module, mesh, *, param_dtype: Optional[torch.dtype] = None,
               prefetch: int = 1, root_reshard: bool = False) -> nn.Module:
    """Shard a DiT (`model.blocks`) or any model with a `blocks` ModuleList (T5 encoder too)."""
    if not hasattr(model, "blocks"):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to shard")
    return shard_blocks(model, model.blocks, mesh, param_dtype=param_dtype, prefetch=prefetch,
                        root_reshard=root_reshard)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def release(model: nn.Module) -> None:
    """Free the unsharded root parameters kept after a forward (e.g. the expert just left at the
    MoE switch); the next forward gathers them again."""
    if is_sharded(model):
        model.reshard()


# ---------------------------------------------------------------------------------------------
# Rank-local loading


class ReadCounter:
    """Wraps a TensorSource (`shape`, `get`, `get_slice`, `keys`, `__contains__`) and counts reads."""

    def __init__(self, source) -> None:
        self.source = source
        self.reads = 0
        self.bytes = 0

    def _count(self, t: torch.Tensor) -> torch.Tensor:
        self.reads += 1
        self.bytes += t.numel() * t.element_size()
        return t

    def get(self, key, *args, **kwargs):
        return self._count(self.source.get(key, *args, **kwargs))

    def get_slice(self, key, *args, **kwargs):
        return self._count(self.source.get_slice(key, *args, **kwargs))

    def __getattr__(self, name):   # shape, keys, file_of, name, ...
        return getattr(self.source, name)

    def __contains__(self, key) -> bool:
        return key in self.source


@dataclass
class ShardLoadStats:
    tensors: int = 0
    bytes: int = 0      # bytes this rank copied from the checkpoint


def _row_range(n0: int, world: int, rank: int) -> tuple[int, int]:
    """FSDP2's dim-0 layout: torch.chunk semantics, ceil-sized chunks, trailing ranks short or empty."""
    c = -(-n0 // world) if n0 else 0
    start = min(rank * c, n0)
    return start, min(start + c, n0)


@torch.no_grad()
def load_sharded(model: nn.Module, source, *, what: str = "model") -> ShardLoadStats:
    """Fill every parameter of a `to_empty`'d FSDP2 model with this rank's rows from `source`.

    Parameters that are not DTensors (modules left unsharded) are read whole. Names and global
    shapes are checked before any data is read. Persistent buffers are read whole.
    """
    from torch.distributed.tensor import DTensor, Shard

    params = dict(model.named_parameters())
    state_keys = set(model.state_dict(keep_vars=True))
    buffers = {n: b for n, b in model.named_buffers() if n in state_keys}
    missing = [k for k in list(params) + list(buffers) if k not in source]
    if missing:
        raise CheckpointError(f"{getattr(source, 'name', source)}: {len(missing)} tensor(s) the {what} "
                              f"needs are missing: {missing[:8]}")
    for name, p in list(params.items()) + list(buffers.items()):
        got, want = tuple(source.shape(name)), tuple(p.shape)
        if got != want:
            raise CheckpointError(f"{source.file_of(name)}: tensor {name!r} has shape {list(got)} but the "
                                  f"{what} expects {list(want)}; config.json and the weights disagree")
    stats = ShardLoadStats()
    for name, p in params.items():
        if isinstance(p, DTensor):
            if len(p.placements) != 1 or p.placements[0] != Shard(0):
                raise NotImplementedError(f"{name}: placement {p.placements} (only 1-D Shard(0) is loaded)")
            local = p.to_local()
            mesh = p.device_mesh
            start, stop = _row_range(p.shape[0], mesh.size(), mesh.get_local_rank())
            if local.shape[0] != stop - start:
                raise RuntimeError(f"{name}: local shard has {local.shape[0]} rows, expected "
                                   f"{stop - start} (rows {start}:{stop} of {p.shape[0]})")
            if stop > start:
                local.copy_(source.get_slice(name, 0, start, stop))
        else:
            local = p.data
            local.copy_(source.get(name))
        stats.tensors += 1
        stats.bytes += local.numel() * local.element_size()
    for name, b in buffers.items():
        b.copy_(source.get(name))
        stats.tensors += 1
        stats.bytes += b.numel() * b.element_size()
    for p in model.parameters():
        p.requires_grad_(False)
    return stats


def shard_and_load(model: nn.Module, mesh, source, device: "str | torch.device", *,
                   dtype: Optional[torch.dtype] = None, param_dtype: Optional[torch.dtype] = None,
                   prefetch: int = 1, root_reshard: bool = False,
                   what: str = "model") -> ShardLoadStats:
    """The whole rank-local path for a model built on the meta device.

    `dtype`: storage dtype of the shards (None: the meta model's); floating tensors are converted
    while being copied. `param_dtype`: compute dtype if different (all-gathered in it).
    """
    if any(not p.is_meta for p in model.parameters()):
        raise ValueError("shard_and_load expects a model built under torch.device('meta'); "
                         "use apply_fsdp for a model that is already loaded")
    if dtype is not None:
        model.to(dtype)     # on meta: changes the dtype record only, allocates nothing
    apply_fsdp(model, mesh, param_dtype=param_dtype, prefetch=prefetch, root_reshard=root_reshard)
    model.to_empty(device=device)
    stats = load_sharded(model, source, what=what)
    model.eval()
    return stats


__all__ = ["apply_fsdp", "shard_blocks", "shard_and_load", "load_sharded", "release", "is_sharded",
           "ReadCounter", "ShardLoadStats"]
