"""`DistContext`: who this process is in the worker group, and the groups it talks on.

The pipeline and the strategies receive one explicitly (no module-level state).
`DistContext.single(device)` is the one-process case and never touches torch.distributed, so the
in-process engine and the unit tests need no process group.

Groups: `world` (NCCL on GPUs, gloo on CPU), `ulysses` (a contiguous block of
ranks per CFG half), `cfg` (the two ranks at the same Ulysses position), and `control`, a gloo group
over the world for CPU-side decisions (the stop flag, small objects) that never syncs a CUDA stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..config import check_world_size
from .mesh import RankLayout, fsdp_mesh


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    world_group: Any = None
    cfg_group: Any = None
    ulysses_group: Any = None
    control_group: Any = None
    cfg_rank: int = 0
    cfg_size: int = 1
    ulysses_rank: int = 0
    ulysses_size: int = 1
    _mesh: Any = field(default=None, repr=False)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def single(cls, device: "str | torch.device" = "cpu") -> "DistContext":
        """One process, no torch.distributed: every collective below is the identity."""
        return cls(rank=0, world_size=1, device=torch.device(device))

    @classmethod
    def from_initialized(cls, parallel, device: "str | torch.device") -> "DistContext":
        """Build the sub-groups of `parallel` (a ParallelConfig) after `init_process_group`.

        Collective: every rank must call it, in the same order relative to other group creations.
        """
        if not dist.is_initialized():
            raise RuntimeError("DistContext.from_initialized needs torch.distributed.init_process_group first; "
                               "use DistContext.single(device) for one process")
        world, rank = dist.get_world_size(), dist.get_rank()
        check_world_size(parallel, world, fix=f"start num_gpus={parallel.num_gpus} workers")
        layout = RankLayout(parallel.cfg_degree, parallel.ulysses_size)
        cfg_rank, uly_rank = layout.coords(rank)
        # new_subgroups_by_enumeration creates every subgroup on every rank (collective) and returns
        # the caller's own.
        uly_group, _ = dist.new_subgroups_by_enumeration(layout.ulysses_groups())
        cfg_group, _ = dist.new_subgroups_by_enumeration(layout.cfg_groups())
        if dist.get_backend() == "gloo":
            control = dist.group.WORLD
        else:
            control = dist.new_group(backend="gloo")
        return cls(rank=rank, world_size=world, device=torch.device(device),
                   world_group=dist.group.WORLD, cfg_group=cfg_group, ulysses_group=uly_group,
                   control_group=control, cfg_rank=cfg_rank, cfg_size=layout.cfg_size,
                   ulysses_rank=uly_rank, ulysses_size=layout.ulysses_size)

    # -- facts -------------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.world_group is not None

    @property
    def fsdp_mesh(self):
        """1-D DeviceMesh over the world for FSDP2 (built once, reusing the world group)."""
        if not self.distributed:
            raise RuntimeError("FSDP needs a process group; this DistContext is single-process")
        if self._mesh is None:
            self._mesh = fsdp_mesh(self.world_group, self.device.type)
        return self._mesh

    # -- collectives on the control (gloo) group ---------------------------------------------

    def agree_stop(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank, at the same call (1-int broadcast).

        Every rank must call it at the same points (step boundaries); the other ranks' flags are
        ignored by design: rank 0 alone receives the user's cancel.
        """
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if (self.rank == 0 and flag) else 0], dtype=torch.int32)
        dist.broadcast(t, src=0, group=self.control_group)
        return bool(t.item())

    def broadcast_object(self, obj: Optional[Any] = None) -> Any:
        """Rank 0's picklable `obj` on every rank (the others' argument is ignored)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.control_group)
        return box[0]

    def barrier(self) -> None:
        if not self.distributed:
            return
        dist.barrier(group=self.control_group)


__all__ = ["DistContext"]
