"""VAE decode split across the ranks of a group by frame rows (issue 17, item 3).

Each rank decodes a horizontal band of every frame: the latent's rows are divided as evenly as
possible, and every module of the decoder that looks at neighbouring pixels gets the rows it needs
from the ranks above and below (`RowHalo` in models/vae_common.py):
- a convolution with a spatial kernel of 3 needs 1 row on each side, which it would otherwise
  zero-pad; at the frame's top and bottom edges the halo is zeros, as in a one-rank decode;
- the attention block of the middle (one head over the whole frame, at latent resolution) runs on
  the gathered frame and keeps its own rows;
- everything else (RMS norm over channels, SiLU, nearest upsampling, temporal convolutions and
  their causal cache, Wan2.2's channel<->space shortcuts and unpatchify) is per pixel.
So the bands are the same numbers as the rows of a one-rank decode (tests/distributed/
test_vae_split.py: gloo ranks against one rank). The causal cache is per pixel and stays on its rank.

Why rows and not time: the decoder's causal cache makes frame chunks depend on every earlier chunk,
so a temporal split would run the ranks one after the other; a row split runs them together and
divides the cache memory too.

Cost per rank: 1/N of the convolution work plus one small all-gather of 2 boundary rows per
spatial convolution (~30 per latent frame) and one of the latent-resolution frame per latent frame.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from wan_core.errors import InputError


def row_bands(rows: int, world: int) -> list[int]:
    """Latent rows per rank, as even as possible, the larger bands first."""
    if rows < world:
        raise InputError(f"the latent has {rows} rows, fewer than the {world} ranks splitting the VAE decode")
    return [rows // world + (1 if i < rows % world else 0) for i in range(world)]


class RowSplitHalo:
    """`RowHalo` over a process group: rank r holds band r of `bands` (latent rows); at any decoder
    level every band is scaled by the same factor (the level's upsampling), so the heights of the
    other bands follow from this rank's."""

    def __init__(self, group, rank: int, world: int, bands: list[int]) -> None:
        self.group, self.rank, self.world, self.bands = group, rank, world, bands

    def _heights(self, local: int) -> list[int]:
        mine = self.bands[self.rank]
        if local % mine:
            raise RuntimeError(f"band of {local} rows is not a multiple of the latent band ({mine} rows)")
        return [b * (local // mine) for b in self.bands]

    def pad_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if x.shape[3] < n:
            raise RuntimeError(f"a band of {x.shape[3]} rows cannot give a halo of {n}")
        edges = torch.cat([x[:, :, :, :n], x[:, :, :, -n:]], dim=3).contiguous()
        got = [torch.empty_like(edges) for _ in range(self.world)]
        dist.all_gather(got, edges, group=self.group)
        zeros = None if 0 < self.rank < self.world - 1 else x.new_zeros(*x.shape[:3], n, x.shape[4])
        above = got[self.rank - 1][:, :, :, n:] if self.rank > 0 else zeros
        below = got[self.rank + 1][:, :, :, :n] if self.rank < self.world - 1 else zeros
        return torch.cat([above, x, below], dim=3)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        return gather_bands(x, self._heights(x.shape[3]), self.group, self.world)

    def own_rows(self, x: torch.Tensor) -> torch.Tensor:
        heights = self._heights(x.shape[3] * self.bands[self.rank] // sum(self.bands))
        start = sum(heights[: self.rank])
        return x[:, :, :, start:start + heights[self.rank]].contiguous()


def gather_bands(x: torch.Tensor, heights: list[int], group, world: int) -> torch.Tensor:
    """Every rank's band [B, C, T, heights[r], W] -> the whole [B, C, T, sum(heights), W], on every rank.
    Bands of unequal height are padded to the tallest for the all-gather and trimmed after."""
    tallest = max(heights)
    pad = tallest - x.shape[3]
    send = torch.cat([x, x.new_zeros(*x.shape[:3], pad, x.shape[4])], dim=3) if pad else x.contiguous()
    got = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(got, send, group=group)
    return torch.cat([g[:, :, :, :h] for g, h in zip(got, heights)], dim=3)


@contextmanager
def row_halo_installed(decoder: nn.Module, halo) -> Iterator[None]:
    """Give every decoder module that mixes rows the halo for the duration of one decode."""
    # The modules that declare a `halo` slot (models/vae_common.py: the spatial convolutions and
    # the attention block); distributed/ does not import models/, so it asks the class.
    mods = [m for m in decoder.modules() if hasattr(type(m), "halo")]
    for m in mods:
        m.halo = halo
    try:
        yield
    finally:
        for m in mods:
            m.halo = None


def decode_rows(vae, latent: torch.Tensor, group, rank: int, world: int) -> torch.Tensor:
    """`vae.decode(latent)` split by rows over the `world` ranks of `group` (collective: every rank
    calls it with the same latent). Returns the whole video on every rank."""
    if world == 1:
        return vae.decode(latent)
    bands = row_bands(latent.shape[3], world)
    start = sum(bands[:rank])
    halo = RowSplitHalo(group, rank, world, bands)
    with row_halo_installed(vae.decoder, halo):
        part = vae.decode(latent[:, :, :, start:start + bands[rank]])
    scale = part.shape[3] // bands[rank]
    return gather_bands(part, [b * scale for b in bands], group, world)


def decode_rows_ctx(vae, latent: torch.Tensor, dist_ctx) -> "torch.Tensor | None":
    """`decode_rows` over a `DistContext`'s world group (collective). A latent with fewer rows than
    ranks (tiny test sizes only) is decoded by rank 0 alone; the other ranks return None."""
    world = dist_ctx.world_size
    if world == 1:
        return vae.decode(latent)
    if latent.shape[3] < world:
        return vae.decode(latent) if dist_ctx.rank == 0 else None
    return decode_rows(vae, latent, dist_ctx.world_group, dist_ctx.rank, world)


__all__ = ["row_bands", "RowSplitHalo", "gather_bands", "row_halo_installed", "decode_rows", "decode_rows_ctx"]
