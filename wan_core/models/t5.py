"""umT5-XXL encoder (the Wan2.2 text encoder), single-device math.

Written from the official `wan/modules/t5.py`. Parameter names follow the official state dict
(`models_t5_umt5-xxl-enc-bf16.pth`), so it loads without a key map:
`token_embedding.weight`, `blocks.{i}.{norm1,norm2}.weight`, `blocks.{i}.attn.{q,k,v,o}.weight`,
`blocks.{i}.ffn.{gate.0,fc1,fc2}.weight`, `blocks.{i}.pos_embedding.embedding.weight`, `norm.weight`.

Differences from a textbook transformer, all official:
- RMS norms without mean subtraction or bias; computed in fp32, cast back to a half weight dtype.
- Attention logits are NOT scaled by 1/sqrt(head_dim) (T5 folds it into the weights).
- Every layer has its own relative-position bias table (umT5: `shared_pos=False`), 32 buckets,
  bidirectional, max distance 128.
- Gated GELU FFN: `fc2(fc1(x) * gelu_tanh(gate(x)))`.

The dtype of the weights is the compute dtype (bf16 on GPU in the official code: matmuls in bf16,
norms and softmax in fp32). There is no dropout (inference only).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.norm1\.weight$")


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096      # width of q/k/v (num_heads * head_dim)
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "T5Config":
        """Read the sizes from the tensors, so the tiny and the real checkpoint both load.

        Raises KeyError naming the first missing key when `sd` is not a umT5 encoder state dict.
        """
        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise KeyError(key)
            return tuple(sd[key].shape)

        vocab, dim = shape("token_embedding.weight")
        layers = [int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))]
        num_buckets, num_heads = shape("blocks.0.pos_embedding.embedding.weight")
        return cls(
            vocab_size=vocab, dim=dim,
            dim_attn=shape("blocks.0.attn.q.weight")[0],
            dim_ffn=shape("blocks.0.ffn.fc1.weight")[0],
            num_heads=num_heads, num_layers=max(layers) + 1, num_buckets=num_buckets)


class RMSNorm(nn.Module):
    """T5 layer norm: x / rms(x) * w, statistics in fp32, result in the weight's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_rms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        x = x * inv_rms                       # promoted to fp32
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5 bucket of `rel = key_pos - query_pos` (int64 tensor).

    Half the buckets are for keys after the query. Within a half, distances below half of it map
    one-to-one; larger ones share log-spaced buckets up to `max_distance`, clamped to the last.
    """
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    # Clamp to 1 inside the log: those positions take the exact branch anyway (avoids log(0)).
    log_ratio = torch.log(dist.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (half - exact)).long()
    far = far.clamp_max(half - 1)
    return bucket + torch.where(dist < exact, dist, far)


class RelativePositionBias(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> torch.Tensor:
        """-> [1, N, L, L] bias (weight dtype) for queries i and keys j."""
        pos = torch.arange(length, device=self.embedding.weight.device)
        rel = pos[None, :] - pos[:, None]                       # [Lq, Lk]: key - query
        buckets = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim]; bias [B or 1, N, L, L] (position bias with masked keys at dtype min)."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        q = self.q(x).view(b, -1, n, d)
        k = self.k(x).view(b, -1, n, d)
        v = self.v(x).view(b, -1, n, d)
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias      # no 1/sqrt(d)
        probs = F.softmax(logits.float(), dim=-1).to(logits.dtype)
        out = torch.einsum("bnij,bjnc->binc", probs, v)            # [B, L, N, D]
        return self.o(out.reshape(b, -1, n * d))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # Written out as the official code does, so bf16 rounds at the same places.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GatedFFN(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False))  # key `gate.0`
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * gelu_tanh(self.gate(x)))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # Official: only fp16 overflows in the residual stream; clamp inf to just below the max.
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = GatedFFN(cfg)
        self.pos_embedding = RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.max_distance)

    def forward(self, x: torch.Tensor, key_pad: Optional[torch.Tensor]) -> torch.Tensor:
        """key_pad: bool [B, 1, 1, L], True where the key is padding (or None)."""
        bias = self.pos_embedding(x.shape[1]).to(x.dtype)
        if key_pad is not None:
            bias = bias.masked_fill(key_pad, torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """`T5Encoder(cfg)(ids [B, L] int64, mask [B, L] or None) -> [B, L, dim]` in the weight dtype.

    Rows at padded positions are computed (and are not zero); callers trim to `mask.sum()` rows.
    """

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.token_embedding(ids)                           # [B, L, dim]
        key_pad = None if mask is None else (mask == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_pad)
        return self.norm(x)
