"""Rank layout of the worker group: world = cfg degree x ulysses degree.

Rank r sits at (cfg_rank, ulysses_rank) = divmod(r, ulysses_size): each CFG half is a contiguous
block of ranks forming one Ulysses group (on one host, neighbouring GPUs usually share the fastest
links, and Ulysses moves far more bytes than CFG). The CFG group of a rank
is the ranks with the same ulysses_rank in each half. FSDP shards over the whole world (both CFG
ranks gather the same block at the same step).

The arithmetic here is pure (no torch.distributed) so it is unit-testable; `fsdp_mesh` builds the
1-D DeviceMesh FSDP2 wants from an existing group without creating new communicators.
"""
from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class RankLayout:
    """Built from a ParallelConfig, whose rules already hold (cfg_size 1 or 2, ulysses_size >= 1)."""

    cfg_size: int
    ulysses_size: int

    @property
    def world_size(self) -> int:
        return self.cfg_size * self.ulysses_size

    def coords(self, rank: int) -> tuple[int, int]:
        """rank -> (cfg_rank, ulysses_rank)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside a world of {self.world_size}")
        return divmod(rank, self.ulysses_size)

    def ulysses_groups(self) -> list[list[int]]:
        """One contiguous group of ranks per CFG half."""
        u = self.ulysses_size
        return [[c * u + i for i in range(u)] for c in range(self.cfg_size)]

    def cfg_groups(self) -> list[list[int]]:
        """For each Ulysses position, the ranks computing cond (first) and uncond (second)."""
        u = self.ulysses_size
        return [[c * u + i for c in range(self.cfg_size)] for i in range(u)]


def fsdp_mesh(group, device_type: str):
    """A 1-D DeviceMesh over `group` (normally the world) for `fully_shard`, reusing the group."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group, device_type, mesh_dim_names=("fsdp",))


__all__ = ["RankLayout", "fsdp_mesh"]
