"""The Wan2.2 DiT (`WanModel`): T2V-A14B and I2V-A14B experts and TI2V-5B.

Math: official `wan/modules/model.py`; precision policy: layers.py.
Parameter names equal the official state-dict keys, so checkpoints load without a key map.

Single-device code. Parallelism is applied from outside through three injection points
(docs/architecture.md, "Models"): each block's `self_attn.attn` module, `model.token_sharding`
(split after the embeddings, gather after the head) and `model.blocks` (FSDP2 / offload units).
This module never imports torch.distributed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Protocol, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused import REFERENCE, BlockOps
from .layers import (LayerNorm, LocalAttention, RMSNorm, compute_dtype, linear, linear_fp32,
                     sinusoidal_embedding_1d)
from .rope import grid_table

MODEL_TYPES = ("t2v", "i2v", "ti2v", "s2v")


@dataclass(frozen=True)
class DiTConfig:
    """Constructor arguments of the official `WanModel` (config.json fields + fixed defaults).

    `patch_size`, `text_dim`, `window_size`, `qk_norm`, `cross_attn_norm` are never read from
    config.json by the official loader (`ignore_for_config`), so `from_dict` ignores them too.
    """

    model_type: str = "t2v"
    in_dim: int = 16
    out_dim: int = 16
    dim: int = 2048
    ffn_dim: int = 8192
    freq_dim: int = 256
    num_heads: int = 16
    num_layers: int = 32
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True

    _IGNORED = ("patch_size", "text_dim", "window_size", "qk_norm", "cross_attn_norm")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        names = {f.name for f in fields(cls)} - set(cls._IGNORED)
        kwargs = {k: d[k] for k in names if k in d}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")


class TokenSharding(Protocol):
    """What `model.token_sharding` must provide (implemented in wan_core/distributed)."""

    ulysses_size: int    # ranks the tokens are split over (the Ulysses degree)

    def split(self, t: torch.Tensor, dim: int) -> torch.Tensor: ...

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Attention


class WanSelfAttention(nn.Module):
    ops: BlockOps = REFERENCE
    """Elementwise ops (models/fused.py); `WanModel.set_block_ops` swaps them."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, qk_norm: bool = True,
                 kernel=None) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attn = LocalAttention(kernel)

    def _qk(self, x: torch.Tensor, norm: nn.Module, rope) -> torch.Tensor:
        """Normalised (RMSNorm over the model width), rotated q or k [B, L, N, D] in x's dtype."""
        b, s = x.shape[:2]
        if isinstance(norm, RMSNorm):
            return self.ops.apply_qk(x, norm.weight, norm.eps, self.num_heads, rope)
        from .rope import rope_apply

        rope = rope if isinstance(rope, torch.Tensor) else torch.complex(*rope).to(torch.complex128)
        return rope_apply(x.view(b, s, self.num_heads, -1), rope, out_dtype=x.dtype)

    def forward(self, x: torch.Tensor, rope, k_lens: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] (L local when token-sharded), rope [L, D/2] complex128 (or the (cos, sin)
        float32 pair of `BlockOps.rope_for`), k_lens [B] global."""
        b, s = x.shape[:2]
        n, d = self.num_heads, self.head_dim
        # Cast once for the three projections (bf16 params -> bf16 matmuls; fp32 on CPU: no-op).
        xb = x.to(compute_dtype(self.q))
        # RoPE (official: float64 -> float32), then q/k in v's dtype: fp32 params stay fp32 (exact on
        # CPU); bf16 params give bf16 q/k/v, which is what the official flash_attention casts to (and
        # halves the Ulysses all-to-all traffic). FAST ops rotate in float32 (models/fused.py).
        q = self._qk(linear(xb, self.q), self.norm_q, rope)
        k = self._qk(linear(xb, self.k), self.norm_k, rope)
        v = linear(xb, self.v).view(b, s, n, d)
        out = self.attn(q, k, v, k_lens)
        return linear(out.flatten(2), self.o)


class WanCrossAttention(WanSelfAttention):
    def _norm(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        return self.ops.rms_norm(x, norm.weight, norm.eps) if isinstance(norm, RMSNorm) else x

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x [B, L, dim], context [B, text_len, dim]; no mask (official: context_lens=None)."""
        b = x.shape[0]
        n, d = self.num_heads, self.head_dim
        q = self._norm(linear(x, self.q), self.norm_q).view(b, -1, n, d)
        k = self._norm(linear(context, self.k), self.norm_k).view(b, -1, n, d)
        v = linear(context, self.v).view(b, -1, n, d)
        out = self.attn(q, k, v, None)
        return linear(out.flatten(2), self.o)


# ---------------------------------------------------------------------------------------------
# Block and head


class WanAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6,
                 qk_norm: bool = True, cross_attn_norm: bool = True, kernel=None) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, eps, qk_norm, kernel)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, eps, qk_norm, kernel)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def mod(self, e0: torch.Tensor, i: int) -> torch.Tensor:
        """Modulation component i (0..5: shift/scale/gate msa, shift/scale/gate mlp), fp32.

        e0 is [B, 1, 6, dim] (one timestep per sample) or [B, L, 6, dim] (per token); the result is
        [B, 1 or L, dim]. Built one component at a time so per-token e0 never gets a second full copy.
        """
        return self.modulation[:, i].float() + e0[:, :, i]

    ops: BlockOps = REFERENCE
    """Elementwise ops (models/fused.py); `WanModel.set_block_ops` swaps them."""

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rope,
                k_lens: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] fp32 residual stream -> same. rope: see `WanSelfAttention.forward`."""
        ops, mod = self.ops, self.mod
        ffn0, ffn2 = self.ffn[0], self.ffn[2]
        wdt = compute_dtype(ffn0)
        h = ops.modulate(x, self.norm1.eps, mod(e0, 1), mod(e0, 0), wdt)
        x = ops.gated_residual(x, self.self_attn(h, rope, k_lens), mod(e0, 2))
        n3 = self.norm3
        c_in = ops.norm_affine(x, n3.weight, n3.bias, n3.eps, wdt) if isinstance(n3, LayerNorm) else x
        x = x + self.cross_attn(c_in, context)
        h = ops.modulate(x, self.norm2.eps, mod(e0, 4), mod(e0, 3), wdt)
        # Through `linear` (not the Sequential) so a LoRA's `lora_delta` reaches the FFN too.
        y = linear(F.gelu(linear(h, ffn0), approximate="tanh"), ffn2)
        return ops.gated_residual(x, y, mod(e0, 5))


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], e [B, 1 or L, dim] (time embedding, not e0) -> [B, L, prod(patch)*out] fp32."""
        mod = self.modulation.float()
        shift, scale = mod[:, 0] + e, mod[:, 1] + e
        return linear_fp32(self.norm(x).float() * (1 + scale) + shift, self.head)


# ---------------------------------------------------------------------------------------------
# Model


class WanModel(nn.Module):
    """`forward(x [B,Cin,F,H,W], t [B] or [B,seq_len], context, seq_len, y=None) -> [B,Cout,F,H,W]`."""

    def __init__(self, cfg: DiTConfig, kernel=None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_size = tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=self.patch_size,
                                         stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([
            WanAttentionBlock(dim, cfg.ffn_dim, cfg.num_heads, cfg.eps, cfg.qk_norm,
                              cfg.cross_attn_norm, kernel)
            for _ in range(cfg.num_layers)])
        self.head = Head(dim, cfg.out_dim, self.patch_size, cfg.eps)
        self.token_sharding: Optional[TokenSharding] = None
        self._rope_cache: tuple = (None, None)

    # -- injection points ---------------------------------------------------------------------

    def set_block_ops(self, ops: BlockOps) -> None:
        """Use `ops` (models/fused.py) for the elementwise work of every block."""
        for m in self.modules():
            if isinstance(m, (WanAttentionBlock, WanSelfAttention)):
                m.ops = ops

    @property
    def block_ops(self) -> BlockOps:
        return self.blocks[0].ops if len(self.blocks) else REFERENCE

    def set_attention_kernel(self, kernel) -> None:
        """Use `kernel` in every LocalAttention (including those wrapped by Ulysses)."""
        for m in self.modules():
            if isinstance(m, LocalAttention):
                m.kernel = kernel

    # -- pieces (public so S2V and tests can reuse them) ---------------------------------------

    @property
    def param_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B, Lt] -> e [B, Lt, dim], e0 [B, Lt, 6, dim], float32 (sinusoid in float64)."""
        b, lt = t.shape
        flat = t.flatten()
        inverse = None
        if flat.numel() > 64:
            # Per-token t holds a few distinct values (TI2V image mode: 0 and the step's t): embed
            # each value once and index, instead of a [27k, dim] x [dim, 6*dim] fp32 matmul per call.
            flat, inverse = torch.unique(flat, return_inverse=True)
        sin = sinusoidal_embedding_1d(self.cfg.freq_dim, flat).float()
        te = self.time_embedding
        e = linear_fp32(F.silu(linear_fp32(sin, te[0])), te[2])
        e0 = linear_fp32(F.silu(e), self.time_projection[1])
        if inverse is not None:
            e, e0 = e[inverse], e0[inverse]
        return e.view(b, lt, -1), e0.view(b, lt, 6, -1)

    def embed_text(self, context: Union[torch.Tensor, Sequence[torch.Tensor]], batch: int) -> torch.Tensor:
        """Zero-pad each context to text_len rows, then text_embedding -> [B, text_len, dim]."""
        text_len = self.cfg.text_len
        if isinstance(context, torch.Tensor) and context.dim() == 2:
            context = context[None]
        rows = list(context) if not isinstance(context, torch.Tensor) else list(context.unbind(0))
        if len(rows) != batch:
            raise ValueError(f"context has {len(rows)} samples but x has {batch}")
        w = self.text_embedding[0].weight
        padded = torch.zeros(batch, text_len, self.cfg.text_dim, dtype=w.dtype, device=w.device)
        for i, c in enumerate(rows):
            if c.shape[0] > text_len:
                raise ValueError(f"context {i} has {c.shape[0]} rows, more than text_len={text_len}")
            padded[i, : c.shape[0]] = c.to(device=w.device, dtype=w.dtype)
        te = self.text_embedding
        return linear(F.gelu(linear(padded, te[0]), approximate="tanh"), te[2])

    def rope_table(self, grid: Sequence[int], seq_len: int, device) -> torch.Tensor:
        key = (tuple(int(g) for g in grid), seq_len, str(device))
        if self._rope_cache[0] != key:
            self._rope_cache = (key, grid_table(grid, self.cfg.head_dim, seq_len, device))
        return self._rope_cache[1]

    def unpatchify(self, u: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """u [B, >=f*h*w, prod(patch)*C] -> [B, C, f*pt, h*ph, w*pw] (official einsum order)."""
        f, h, w = grid
        pt, ph, pw = self.patch_size
        c = self.cfg.out_dim
        b = u.shape[0]
        u = u[:, : f * h * w].reshape(b, f, h, w, pt, ph, pw, c)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)
        return u.reshape(b, c, f * pt, h * ph, w * pw)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor, context, seq_len: int,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One denoiser call.

        x: [B, C, F, H, W] noisy latent (C + Cy == in_dim). t: [B] (one timestep per sample; the
        modulation stays [B, 1, ...] and broadcasts) or [B, seq_len] (per token, TI2V).
        context: [B, Lc, text_dim] or a list of B tensors [Lc_i, text_dim] (Lc <= text_len; zero-padded
        to text_len here, no cross-attention mask, as the official code). seq_len: padded token
        count (>= tokens of x; a multiple of the token sharding's ulysses_size when sharded). y: [B, Cy, F, H, W]
        conditioning concatenated after x's channels (i2v). Returns [B, out_dim, F, H, W] float32.
        """
        cfg = self.cfg
        if cfg.model_type == "i2v" and y is None:
            raise ValueError("the i2v model needs y (mask + image latent) concatenated to x")
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x (with y) must be [B, {cfg.in_dim}, F, H, W]; got {list(x.shape)}")
        b = x.shape[0]
        device = self.patch_embedding.weight.device

        # Patchify -> tokens [B, L, dim] (f-major, then h, then w), zero-padded to seq_len; fp32 stream.
        w = self.patch_embedding.weight
        u = F.conv3d(x.to(device=device, dtype=w.dtype), w, self.patch_embedding.bias,
                     stride=self.patch_size)
        grid = tuple(u.shape[2:])
        n_tok = grid[0] * grid[1] * grid[2]
        if n_tok > seq_len:
            raise ValueError(f"seq_len={seq_len} is smaller than the {n_tok} tokens of x")
        u = u.flatten(2).transpose(1, 2).float()
        if n_tok < seq_len:
            u = torch.cat([u, u.new_zeros(b, seq_len - n_tok, u.shape[2])], dim=1)

        # Time: [B] -> one embedding per sample (broadcast over tokens); [B, seq_len] -> per token.
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() == 1:
            if t.shape[0] != b:
                raise ValueError(f"t has {t.shape[0]} values for a batch of {b}")
            t = t[:, None]
        elif t.dim() == 2:
            if t.shape != (b, seq_len):
                raise ValueError(f"per-token t must be [B, seq_len] = [{b}, {seq_len}]; got {list(t.shape)}")
            if bool((t == t[:, :1]).all()):
                t = t[:, :1]   # constant per sample (TI2V text mode): same values, no per-token copy
        else:
            raise ValueError(f"t must be [B] or [B, seq_len]; got {list(t.shape)}")
        per_token = t.shape[1] > 1
        e, e0 = self.embed_time(t)

        ctx = self.embed_text(context, b)
        rope = self.rope_table(grid, seq_len, device)
        # Real token count per sample (global, also under token sharding). Kept on the CPU: kernels
        # read it with .tolist(), which would otherwise sync the GPU in every block.
        k_lens = torch.full((b,), n_tok, dtype=torch.int32)

        sharding = self.token_sharding
        if sharding is not None:
            if seq_len % sharding.ulysses_size:
                raise ValueError(f"seq_len={seq_len} is not a multiple of the token sharding's "
                                 f"ulysses_size {sharding.ulysses_size}")
            u = sharding.split(u, 1)
            rope = sharding.split(rope, 0)
            if per_token:
                e, e0 = sharding.split(e, 1), sharding.split(e0, 1)

        rope = self.block_ops.rope_for(rope)   # float32 (cos, sin) once per forward for FAST ops
        for block in self.blocks:
            u = block(u, e0, ctx, rope, k_lens)

        out = self.head(u, e)
        if sharding is not None:
            out = sharding.gather(out, 1)
        return self.unpatchify(out, grid).float()


__all__ = ["DiTConfig", "WanModel", "WanAttentionBlock", "WanSelfAttention", "WanCrossAttention", "Head",
           "TokenSharding"]
