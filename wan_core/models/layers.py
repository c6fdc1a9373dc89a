"""Small building blocks of the Wan DiT: norms, timestep embedding, precision-aware linears, attention.

Precision policy (the official GPU path): the "big" linears (patch
embedding, text embedding, q/k/v/o, FFN) run in the parameter dtype (bf16 on GPU); the timestep MLP,
modulation, every norm and the output head run in float32 whatever the parameter dtype (the official
code runs them inside an fp32 autocast region, so bf16 weights are upcast there too); the sinusoidal
embedding and RoPE run in float64. The residual stream is float32. With float32 parameters on CPU all
of this is plain float32 math, which is what the parity goldens check.

We implement the policy by explicit casts instead of autocast, so the same code is exact in fp32 on
CPU and needs no autocast context on CUDA.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def compute_dtype(layer: nn.Linear) -> torch.dtype:
    """The dtype a big linear computes in: its weight's, or the `compute_dtype` a weight transform
    that replaced the layer set (fp8 weights compute in bf16, loading/fp8.py)."""
    return getattr(layer, "compute_dtype", layer.weight.dtype)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A big linear: the input is cast to the weight's dtype (bf16 weights -> bf16 matmul). A layer
    replaced from outside by a subclass (a weight transform: fp8, loading/fp8.py) computes itself.

    Injection point: `layer.lora_delta`, when set from outside (loading/lora.py), is called as
    `delta(x, out) -> out` and adds the LoRA terms; the model never sets it."""
    if type(layer) is not nn.Linear:
        out = layer(x)
    else:
        w = layer.weight
        out = F.linear(x.to(w.dtype), w, layer.bias)
    delta = layer.__dict__.get("lora_delta")
    return out if delta is None else delta(x, out)


def linear_fp32(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A precision-sensitive linear (time MLP, head): always computed in float32 (`lora_delta`
    as in `linear`)."""
    b = layer.bias.float() if layer.bias is not None else None
    out = F.linear(x.float(), layer.weight.float(), b)
    delta = layer.__dict__.get("lora_delta")
    return out if delta is None else delta(x.float(), out)


class RMSNorm(nn.Module):
    """WanRMSNorm: x * rsqrt(mean(x^2) + eps) in float32, cast back to x's dtype, times weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight


class LayerNorm(nn.LayerNorm):
    """WanLayerNorm: LayerNorm computed in float32 (weights upcast), result in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Official `sinusoidal_embedding_1d`: float64, cos first. position [N] -> [N, dim] float64."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding width {dim} must be even")
    half = dim // 2
    position = position.to(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


class LocalAttention(nn.Module):
    """Self/cross attention on one device: `attn(q, k, v, k_lens)` with [B, L, N, D] tensors.

    Holds an `AttentionKernel` (models/attention.py). Ulysses replaces a block's `self_attn.attn` with a
    wrapper that all-to-alls around a LocalAttention; `WanModel.set_attention_kernel` updates every
    LocalAttention it finds (wrapped ones included).
    """

    def __init__(self, kernel=None) -> None:
        super().__init__()
        if kernel is None:
            from .attention import SDPA

            kernel = SDPA
        self.kernel = kernel

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.kernel(q, k, v, k_lens)

    def extra_repr(self) -> str:
        return f"kernel={getattr(self.kernel, 'name', self.kernel)!r}"


__all__ = ["linear", "linear_fp32", "RMSNorm", "LayerNorm", "sinusoidal_embedding_1d", "LocalAttention"]
