"""3-D rotary position embedding of the Wan DiT, in float64 as the official code.

A head of D = 128 channels forms 64 complex pairs (adjacent elements = real, imag): the first
D/2 - 2*(D/2 // 3) = 22 pairs rotate with the frame index, the next 21 with the row and the last 21
with the column. Tables cover positions 0..1023 with theta 10000 (official `rope_params`).

Instead of the official per-sample loop we build one complex128 table of shape [L, D/2] (one row per
token of the padded sequence; padding rows are 1+0j, i.e. unrotated, which is exact) and multiply.
The table is what token sharding splits along with the tokens, and what S2V builds with its own
positions (`table_from_positions`).
"""
from __future__ import annotations

from typing import Sequence

import torch

MAX_POS = 1024
THETA = 10000.0


def rope_params(max_seq_len: int, dim: int, theta: float = THETA) -> torch.Tensor:
    """Official `rope_params`: [max_seq_len, dim/2] complex128, exp(i * p * theta^(-2j/dim))."""
    if dim % 2:
        raise ValueError(f"rotary table width {dim} must be even (pairs of channels)")
    freqs = torch.outer(
        torch.arange(max_seq_len),
        1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
    return torch.polar(torch.ones_like(freqs), freqs)


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """Complex widths of the (frame, height, width) parts: 22, 21, 21 for head_dim 128."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_freqs(head_dim: int, max_pos: int = MAX_POS, theta: float = THETA) -> tuple[torch.Tensor, ...]:
    """The three per-axis tables (frame, height, width), each [max_pos, width_i] complex128."""
    d = head_dim
    full = torch.cat([
        rope_params(max_pos, d - 4 * (d // 6), theta),
        rope_params(max_pos, 2 * (d // 6), theta),
        rope_params(max_pos, 2 * (d // 6), theta),
    ], dim=1)
    return tuple(full.split(list(axis_split(head_dim)), dim=1))


def grid_table(grid: Sequence[int], head_dim: int, seq_len: int | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """[seq_len, head_dim/2] complex128 table for tokens in (f, h, w) raster order from position 0.

    Rows beyond f*h*w (padding) are 1+0j. seq_len defaults to f*h*w.
    """
    f, h, w = (int(v) for v in grid)
    ft, ht, wt = rope_freqs(head_dim)
    n = f * h * w
    table = torch.cat([
        ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        ht[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        wt[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(n, -1)
    if seq_len is not None and seq_len > n:
        pad = torch.ones(seq_len - n, table.shape[1], dtype=table.dtype)
        table = torch.cat([table, pad])
    return table.to(device) if device is not None else table


def table_from_positions(f_pos: torch.Tensor, h_pos: torch.Tensor, w_pos: torch.Tensor,
                         head_dim: int) -> torch.Tensor:
    """Table for explicit integer positions per token (each [L], may be negative: conjugate).

    Used by S2V (reference tokens at frame 30, frame-pack tokens at negative positions).
    """
    tables = rope_freqs(head_dim)
    parts = []
    for tab, pos in zip(tables, (f_pos, h_pos, w_pos)):
        pos = pos.long().cpu()
        row = tab[pos.abs()]
        parts.append(torch.where((pos < 0)[:, None], row.conj(), row))
    return torch.cat(parts, dim=-1)


def rope_apply(x: torch.Tensor, table: torch.Tensor, chunk: int = 8192,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotate x [B, L, N, D] by table [L, D/2] complex128 -> [B, L, N, D] in `out_dtype`.

    Computed in float64 and rounded to float32 (official), then to `out_dtype`; processed in token
    chunks so the float64 temporaries stay small at 75k tokens.
    """
    b, seq, n, d = x.shape
    if table.shape[0] != seq:
        raise ValueError(f"RoPE table has {table.shape[0]} rows for {seq} tokens")
    table = table.to(x.device)
    out = torch.empty(b, seq, n, d, dtype=out_dtype, device=x.device)
    for s in range(0, seq, chunk):
        e = min(seq, s + chunk)
        xc = torch.view_as_complex(x[:, s:e].to(torch.float64).reshape(b, e - s, n, d // 2, 2))
        out[:, s:e] = torch.view_as_real(xc * table[None, s:e, None, :]).flatten(3).float()
    return out
