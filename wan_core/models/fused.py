"""The elementwise work of a DiT block, as swappable functions ("block ops").

Why: at 720P the matmuls and attention of an A14B step run at the GPU's ceiling, but about a fifth
of the step (measured on an H100: ~5 s of 23.8) went to the casts, norms, RoPE and modulation
around them, each a separate pass over [2 x 75,600 x 5,120] tensors, RoPE in float64. These
functions do the same math in one pass each.

Two sets:
- `REFERENCE`: the official precision policy op by op (layers.py): float64 RoPE, separate kernels.
  Used with float32 parameters (CPU parity against the goldens stays exact) and as the oracle.
- `FAST` (half-precision parameters only): the same math, with RoPE in float32 instead of float64:
  its result is rounded to bf16 right after, and float32 rotation error (~1e-7 relative) is far
  below a bf16 step (4e-3), so only rare 1-ulp bf16 differences remain. Each op is one function
  that `torch.compile` turns into one fused kernel (`compiled_ops`); the same functions also run
  eagerly (CPU tests, or when compiling is off or fails).

Every op is pure (no module state): parameters come in as tensors, so one compiled graph serves all
40 blocks. Models call `block.ops.<name>`; the engine picks the set (`pick_block_ops`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .rope import rope_apply

log = logging.getLogger("wan_core.fused")


# ---------------------------------------------------------------------------------------------
# Reference ops (the official op order; exact in float32)


def _ref_modulate(x: torch.Tensor, eps: float, scale: torch.Tensor, shift: torch.Tensor,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm (no affine, fp32) of x, then * (1 + scale) + shift in fp32, cast to out_dtype."""
    h = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return (h * (1 + scale) + shift).to(out_dtype)


def _ref_gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x + y * gate


def _ref_norm_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                     out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm with affine in fp32 (weights upcast), cast to out_dtype (norm3 before cross-attn)."""
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps).to(out_dtype)


def _ref_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """WanRMSNorm: normalise in fp32, round to x's dtype, then times weight (in x's dtype)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).type_as(x) * weight


def _ref_qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int,
                      rope: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the model width, split into heads, RoPE in float64 (official) -> x's dtype."""
    b, s, _ = x.shape
    y = _ref_rms_norm(x, weight, eps).view(b, s, heads, -1)
    return rope_apply(y, rope, out_dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# Fast ops (half-precision parameters): one pass each, RoPE in float32


def _fast_modulate(x, eps, scale, shift, out_dtype):
    h = F.layer_norm(x.float(), x.shape[-1:], eps=eps)
    return torch.addcmul(shift, h, 1 + scale).to(out_dtype)


def _fast_qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int,
                       cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, dim] half, weight [dim], cos/sin [L, D/2] fp32 -> [B, L, heads, D] in x's dtype.

    Same roundings as the reference (normalised value rounded to x's dtype, times weight rounded
    again, final result rounded), with the rotation done in fp32 instead of fp64."""
    b, s, _ = x.shape
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    y = (y.float() * weight.float()).to(x.dtype).float().view(b, s, heads, -1, 2)
    re, im = y[..., 0], y[..., 1]
    c, sn = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([re * c - im * sn, re * sn + im * c], dim=-1)
    return out.flatten(3).to(x.dtype)


def _fast_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return (y.float() * weight.float()).to(x.dtype)


def rope_cos_sin(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """complex128 RoPE table [L, D/2] -> (cos, sin) float32 (computed in fp64, rounded once)."""
    return table.real.float().contiguous(), table.imag.float().contiguous()


# ---------------------------------------------------------------------------------------------
# Sets


@dataclass(frozen=True)
class BlockOps:
    """The elementwise pieces a DiT block calls. `fast` says whether `qk_norm_rope` takes (cos, sin)
    float32 tables (True) or the complex128 table (False)."""

    name: str
    fast: bool
    modulate: Callable
    gated_residual: Callable
    norm_affine: Callable
    rms_norm: Callable
    qk_norm_rope: Callable

    def rope_for(self, table: torch.Tensor):
        """What `qk_norm_rope` wants as its rope argument, made once per forward."""
        return rope_cos_sin(table) if self.fast else table

    def apply_qk(self, x, weight, eps, heads, rope):
        if self.fast:
            if isinstance(rope, torch.Tensor):   # a caller that passed the complex table (S2V)
                rope = rope_cos_sin(rope)
            return self.qk_norm_rope(x, weight, eps, heads, *rope)
        return self.qk_norm_rope(x, weight, eps, heads, rope)


REFERENCE = BlockOps("reference", False, _ref_modulate, _ref_gated_residual, _ref_norm_affine,
                     _ref_rms_norm, _ref_qk_norm_rope)

FAST = BlockOps("fast", True, _fast_modulate, _ref_gated_residual, _ref_norm_affine,
                _fast_rms_norm, _fast_qk_norm_rope)


class _CompileOrEager:
    """`torch.compile(fn)`; if compiling or running the compiled graph raises, warn once and run
    `fn` eagerly from then on (same math, unfused), so a missing compiler never stops a video."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=False, fullgraph=True)
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as exc:  # inductor/triton missing or a codegen bug: fall back, say so
                self.failed = True
                log.warning("torch.compile of %s failed (%s: %s); running it unfused",
                            self.fn.__name__, type(exc).__name__, str(exc).splitlines()[0][:200])
        return self.fn(*args)


def compiled_ops(base: BlockOps = FAST) -> BlockOps:
    """`base` with every op wrapped in torch.compile (one fused kernel each)."""
    wrap = _CompileOrEager
    return BlockOps(base.name + "+compile", base.fast, wrap(base.modulate), wrap(base.gated_residual),
                    wrap(base.norm_affine), wrap(base.rms_norm), wrap(base.qk_norm_rope))


def compile_wanted() -> bool:
    """WAN22_COMPILE=1 compiles the FAST ops (one fused kernel each). Off by default until it has
    been timed and checked on a GPU (docs/benchmarks.md); also needs Triton."""
    if os.environ.get("WAN22_COMPILE", "0").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


_COMPILED: dict[str, BlockOps] = {}


def pick_block_ops(param_dtype: torch.dtype, device: torch.device | str,
                   compile: bool | None = None) -> BlockOps:
    """REFERENCE for float32 parameters (exact parity); FAST for bf16/fp16, compiled on CUDA when
    `compile` (default: `compile_wanted()`). One compiled set per process, shared by all models."""
    if param_dtype not in (torch.bfloat16, torch.float16):
        return REFERENCE
    if torch.device(device).type != "cuda":
        return FAST
    if compile is None:
        compile = compile_wanted()
    if not compile:
        return FAST
    if "fast" not in _COMPILED:
        _COMPILED["fast"] = compiled_ops(FAST)
    return _COMPILED["fast"]


__all__ = ["BlockOps", "REFERENCE", "FAST", "compiled_ops", "pick_block_ops", "compile_wanted",
           "rope_cos_sin"]
