"""CFG parallelism: cond on cfg rank 0, uncond on cfg rank 1, one all-gather.

Per step each rank of a CFG pair runs one forward instead of two; the exchange is one latent-sized
tensor. Both ranks then hold the same (cond, uncond) pair, bit for bit, and combine it with the same
expression (`combine`), so every rank keeps an identical latent without a further broadcast.

With guidance 1 the unconditional branch is unused, so `config.check_cfg_guidance` refuses
cfg_parallel there (half the group would compute for nothing).
"""
from __future__ import annotations

import torch

COND, UNCOND = 0, 1


def my_branch(dist) -> int:
    """COND (0) or UNCOND (1): the branch this rank computes."""
    return COND if dist.cfg_rank == 0 else UNCOND


def exchange(dist, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather this rank's prediction over the CFG group -> (cond, uncond), identical everywhere."""
    if dist.cfg_size == 1:
        raise RuntimeError("exchange needs a CFG group of 2 (cfg_parallel=True)")
    import torch.distributed as tdist

    mine = mine.contiguous()
    parts = [torch.empty_like(mine) for _ in range(dist.cfg_size)]
    tdist.all_gather(parts, mine, group=dist.cfg_group)
    return parts[COND], parts[UNCOND]


def combine(cond: torch.Tensor, uncond: torch.Tensor, guide: float) -> torch.Tensor:
    """The official guidance mix `uncond + g * (cond - uncond)` (wan/text2video.py)."""
    return uncond + guide * (cond - uncond)


def guided(dist, cond_fn, uncond_fn, guide: float) -> torch.Tensor:
    """Guided prediction: both branches locally, or one per rank of the CFG pair + exchange."""
    if dist.cfg_size == 1:
        return combine(cond_fn(), uncond_fn(), guide)
    mine = cond_fn() if my_branch(dist) == COND else uncond_fn()
    cond, uncond = exchange(dist, mine)
    return combine(cond, uncond, guide)


__all__ = ["exchange", "combine", "guided", "my_branch", "COND", "UNCOND"]
