"""Ulysses sequence parallelism (DeepSpeed-Ulysses arXiv 2309.14509).

Each rank of a Ulysses group of P ranks holds L/P tokens with all N heads. Around self-attention
one all-to-all turns local q/k/v [B, L/P, N, D] into the full sequence for N/P heads
[B, L, N/P, D]; the wrapped attention runs locally; one all-to-all turns the output back into
[B, L/P, N, D]. Everything else in a block (projections, norms, cross-attention on the full text
context, FFN) is per token and needs no communication; the model splits the tokens after the
embeddings and gathers them after the head through `model.token_sharding` (TokenSharding below).

Padding: the caller rounds seq_len up to a multiple of P (`config.padded_seq_len`); `k_lens` holds the
global real length, so the padded keys are masked inside the wrapped attention exactly as on one
device (outputs differ from one GPU otherwise).

Applied from outside (no monkeypatching): `apply_ulysses` replaces each block's `self_attn.attn`
module and sets `model.token_sharding`; the model itself never imports torch.distributed.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import check_ulysses_size

_HALF = (torch.bfloat16, torch.float16)


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Exchange block i of dim 0 with rank i of `group` (x contiguous, dim 0 == group size)."""
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def seq_to_heads(x: torch.Tensor, group, ulysses_size: int) -> torch.Tensor:
    """[S, B, L/P, N, D] (S stacked tensors, e.g. q/k/v) -> [S, B, L, N/P, D] over `group`."""
    s, b, lp, n, d = x.shape
    # Block j along dim 0 goes to rank j: heads [j*N/P, (j+1)*N/P) of my tokens.
    x = x.reshape(s, b, lp, ulysses_size, n // ulysses_size, d).permute(3, 0, 1, 2, 4, 5).contiguous()
    x = _all_to_all(x, group)                     # [P(src rank = seq chunk), S, B, L/P, N/P, D]
    return x.permute(1, 2, 0, 3, 4, 5).reshape(s, b, ulysses_size * lp, n // ulysses_size, d)


def heads_to_seq(x: torch.Tensor, group, ulysses_size: int) -> torch.Tensor:
    """[B, L, N/P, D] -> [B, L/P, N, D] over `group` (inverse of seq_to_heads for one tensor)."""
    b, seq, hp, d = x.shape
    # Block j along dim 0 = sequence chunk j (rank j's tokens) of my heads.
    x = x.reshape(b, ulysses_size, seq // ulysses_size, hp, d).permute(1, 0, 2, 3, 4).contiguous()
    x = _all_to_all(x, group)                     # [P(src rank = head group), B, L/P, N/P, D]
    return x.permute(1, 2, 0, 3, 4).reshape(b, seq // ulysses_size, ulysses_size * hp, d)


class UlyssesAttention(nn.Module):
    """Wraps an attention module called as inner(q, k, v, k_lens) on [B, L, N, D] tensors.

    Called with local q/k/v [B, L/P, N, D] and the global `k_lens`; returns [B, L/P, N, D] in q's
    dtype. q, k and v travel in one all-to-all. They are first brought to one dtype the way the
    wrapped kernel would do it anyway (so the result is bitwise the single-device one): a half-only
    kernel (flash) gets all three in bf16 (what the official code sends, half the bytes of fp32 q/k),
    SDPA gets k and v in q's dtype.
    """

    def __init__(self, inner: nn.Module, group, ulysses_size: Optional[int] = None) -> None:
        super().__init__()
        self.inner = inner
        self.group = group
        self.ulysses_size = ulysses_size if ulysses_size is not None else dist.get_world_size(group)

    def _comm_dtype(self, q: torch.Tensor) -> torch.dtype:
        kernel = getattr(self.inner, "kernel", None)
        if getattr(kernel, "half_only", False) and q.dtype not in _HALF:
            return torch.bfloat16
        return q.dtype

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = self.ulysses_size
        if q.shape[2] % p:
            raise ValueError(f"{q.shape[2]} heads cannot be split over a Ulysses group of {p}")
        if not (q.shape == k.shape == v.shape):
            raise ValueError(f"Ulysses self-attention needs q/k/v of one shape; got "
                             f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
        out_dtype = q.dtype
        dt = self._comm_dtype(q)
        qkv = torch.stack([q.to(dt), k.to(dt), v.to(dt)])          # [3, B, L/P, N, D]
        q, k, v = seq_to_heads(qkv, self.group, p).unbind(0)        # each [B, L, N/P, D]
        out = self.inner(q, k, v, k_lens)
        return heads_to_seq(out, self.group, p).to(out_dtype)

    def extra_repr(self) -> str:
        return f"ulysses_size={self.ulysses_size}"


class TokenSharding:
    """`model.token_sharding` for a Ulysses group: rank i keeps the i-th of P equal chunks.

    Autograd-free (inference only): split is a view, gather is an all_gather + cat.
    """

    def __init__(self, group, ulysses_size: Optional[int] = None, rank: Optional[int] = None) -> None:
        self.group = group
        self.ulysses_size = ulysses_size if ulysses_size is not None else dist.get_world_size(group)
        self.rank = rank if rank is not None else dist.get_rank(group)

    def split(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        if n % self.ulysses_size:
            raise ValueError(f"cannot split {n} along dim {dim} into {self.ulysses_size} equal chunks; "
                             f"pad to a multiple of {self.ulysses_size} (config.padded_seq_len)")
        c = n // self.ulysses_size
        return t.narrow(dim, self.rank * c, c)

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.ulysses_size)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=dim)

    def __repr__(self) -> str:
        return f"TokenSharding(ulysses_size={self.ulysses_size}, rank={self.rank})"


def apply_ulysses(model: nn.Module, group, ulysses_size: Optional[int] = None,
                  rank: Optional[int] = None) -> nn.Module:
    """Wrap every block's `self_attn.attn` and set `model.token_sharding` (in place; returns model).

    Only self-attention is wrapped: cross-attention keys come from the replicated text context.
    """
    ulysses_size = ulysses_size if ulysses_size is not None else dist.get_world_size(group)
    if ulysses_size == 1:
        return model
    heads = {int(block.self_attn.num_heads) for block in model.blocks}
    for n in sorted(heads):
        check_ulysses_size(n, ulysses_size)
    for block in model.blocks:
        attn = block.self_attn.attn
        if isinstance(attn, UlyssesAttention):
            raise RuntimeError("apply_ulysses was already applied to this model")
        block.self_attn.attn = UlyssesAttention(attn, group, ulysses_size)
    model.token_sharding = TokenSharding(group, ulysses_size, rank)
    return model


__all__ = ["UlyssesAttention", "TokenSharding", "apply_ulysses", "seq_to_heads", "heads_to_seq"]
