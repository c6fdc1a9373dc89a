"""Ranks as threads: an in-process stand-in for a process group, to test the model side of the
sequence-parallel contract (`model.token_sharding`, wrappers around `block.self_attn.attn`) on the
goldens without torch.distributed. Used by test_dit.py and test_s2v.py."""
from __future__ import annotations

import threading
from typing import Callable

import torch


class ThreadGroup:
    """`world` ranks (threads) exchanging values at a barrier."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def exchange(self, rank: int, value) -> list:
        """Every rank's `value`, in rank order (an all-gather of Python objects)."""
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class ThreadSharding:
    """`model.token_sharding` for one thread rank: contiguous chunks, gathered by concatenation."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.ulysses_size = group, rank, group.world

    def split(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.chunk(t, self.ulysses_size, dim=dim)[self.rank]

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat(self.group.exchange(self.rank, t), dim=dim)


def run_ranks(world: int, fn: Callable[[int, ThreadGroup], object], timeout_s: float = 300) -> list:
    """fn(rank, group) on `world` threads -> results by rank. An exception on one rank aborts the
    barrier (so the others do not wait forever) and is raised here."""
    group = ThreadGroup(world)
    outs: list = [None] * world
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            outs[rank] = fn(rank, group)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout_s)
    if errors:
        raise errors[0]
    stuck = [r for r, th in enumerate(threads) if th.is_alive()]
    assert not stuck, f"ranks {stuck} still running after {timeout_s} s"
    return outs
