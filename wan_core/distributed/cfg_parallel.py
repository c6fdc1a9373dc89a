"""CFG parallelism (runtime.md §7): cond on cfg rank 0, uncond on cfg rank 1, one all-gather.

Per step each rank of a CFG pair runs one forward instead of two; the exchange is one latent-sized
tensor. Both ranks then hold the same (cond, uncond) pair, bit for bit, and combine it with the same
expression (`combine`), so every rank keeps an identical latent without a further broadcast.

With guidance 1 the unconditional branch is unused (uncond + 1 * (cond - uncond) == cond), so half
the group would compute for nothing: `validate_guidance` refuses it with a ConfigError.
"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch

from ..errors import ConfigError

COND, UNCOND = 0, 1


def validate_guidance(cfg_parallel: bool, guide_scales: Union[float, Iterable[float], object]) -> None:
    """Refuse cfg_parallel when a guidance scale the run uses is 1 (or not a number).

    `guide_scales`: a float, an iterable of floats, or a GuideScale (low_noise, high_noise).
    """
    if not cfg_parallel:
        return
    if hasattr(guide_scales, "low_noise"):
        named = [("low-noise", guide_scales.low_noise), ("high-noise", guide_scales.high_noise)]
    elif isinstance(guide_scales, (int, float)):
        named = [("guide", guide_scales)]
    else:
        named = [(f"guide[{i}]", g) for i, g in enumerate(guide_scales)]
    ones = [f"{name}={float(g):g}" for name, g in named if float(g) == 1.0 or math.isnan(float(g))]
    if ones:
        raise ConfigError(
            f"cfg_parallel needs classifier-free guidance > 1 on every expert, but {', '.join(ones)}: "
            "at guidance 1 the unconditional branch is not used, so one of the two CFG ranks would "
            "compute for nothing. Turn cfg_parallel off (use ulysses_size=num_gpus instead), or set "
            "the guide scale above 1")


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


__all__ = ["validate_guidance", "exchange", "combine", "guided", "my_branch", "COND", "UNCOND"]
