"""Attention kernels behind one function, and the pick of the fastest available backend.

Layout everywhere: q [B, Lq, N, D], k/v [B, Lk, N, D] -> out [B, Lq, N, D] in q's dtype.
`k_lens[b]` masks keys at positions >= k_lens[b] (padding of the video sequence); queries are never
masked (padded query rows are computed and dropped later), as in the official `flash_attention`.

Backends: FlashAttention 3 (`flash_attn_interface`), 4 (`flash_attn.cute`), 2 (`flash_attn`) on
CUDA when importable, else PyTorch SDPA. The choice is made when the engine starts (never at import)
and reported; a requested backend that cannot run falls back to SDPA with a loud warning.
"""
from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

log = logging.getLogger("wan_core.attention")

# Half-precision dtype the kernels run in; the official code casts q/k/v to bf16 for flash-attn.
_HALF = (torch.bfloat16, torch.float16)


def _sdpa(q, k, v):
    # SDPA wants [B, N, L, D].
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _load_flash(name: str) -> Optional[Callable]:
    """Return fn(q, k, v) -> out for flash backend `name`, or None when it is not importable."""
    try:
        if name == "flash3":
            mod = importlib.import_module("flash_attn_interface")
            fn = mod.flash_attn_func
        elif name == "flash4":
            mod = importlib.import_module("flash_attn.cute")
            fn = mod.flash_attn_func
        elif name == "flash2":
            mod = importlib.import_module("flash_attn")
            fn = mod.flash_attn_func
        else:
            return None
    except Exception:  # ImportError, or an ABI error raised while importing a wrong wheel
        return None

    def call(q, k, v):
        out = fn(q, k, v)
        # FA3/FA4 return (out, lse) in some versions and out alone in others (Wan2.2 PR #312).
        return out[0] if isinstance(out, tuple) else out

    return call


@dataclass
class AttentionKernel:
    """A resolved backend: `name` for reporting, `fn(q, k, v)` on equal-length unmasked inputs."""

    name: str
    fn: Callable
    half_only: bool   # flash kernels take bf16/fp16 only

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 k_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        out_dtype = q.dtype
        if k_lens is not None:
            lens = [int(x) for x in k_lens.tolist()]
            if all(n == lens[0] for n in lens) and lens[0] < k.shape[1]:
                # Masking keys >= n is the same as attending to the first n keys only, which every
                # kernel does without a mask (and faster).
                k, v = k[:, : lens[0]], v[:, : lens[0]]
            elif any(n < k.shape[1] for n in lens):
                return _masked_sdpa(q, k, v, lens).to(out_dtype)
        if self.half_only and q.dtype not in _HALF:
            q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        elif not self.half_only:
            v = v.to(q.dtype)
            k = k.to(q.dtype)
        return self.fn(q, k, v).to(out_dtype)


def _masked_sdpa(q, k, v, lens: list[int]) -> torch.Tensor:
    """Per-sample key masks (batch > 1 with different real lengths); rare, kept simple."""
    mask = torch.zeros(q.shape[0], 1, 1, k.shape[1], dtype=torch.bool, device=q.device)
    for b, n in enumerate(lens):
        mask[b, ..., :n] = True
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype),
                                         v.transpose(1, 2).to(q.dtype), attn_mask=mask)
    return out.transpose(1, 2)


SDPA = AttentionKernel("sdpa", _sdpa, half_only=False)


def resolve_backend(requested: str = "auto", device: str | torch.device = "cpu") -> AttentionKernel:
    """Pick the kernel for `device`. 'auto' tries FA3, FA4, FA2, then SDPA on CUDA; SDPA on CPU.

    A requested flash backend that is not importable (or a CPU device) falls back to SDPA with a
    warning that says why, so a user never silently runs the slow path thinking it is the fast one.
    """
    requested = str(getattr(requested, "value", requested)).lower()
    is_cuda = torch.device(device).type == "cuda"
    if requested == "sdpa":
        return SDPA
    order = ["flash3", "flash4", "flash2"] if requested == "auto" else [requested]
    if is_cuda:
        for name in order:
            fn = _load_flash(name)
            if fn is not None:
                return AttentionKernel(name, fn, half_only=True)
    if requested != "auto":
        why = "the device is not CUDA" if not is_cuda else f"the {requested} package is not importable"
        msg = f"attention backend {requested!r} unavailable ({why}); falling back to PyTorch SDPA"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
    return SDPA
