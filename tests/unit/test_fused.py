"""Block ops (models/fused.py): the FAST set computes the REFERENCE math for bf16 parameters.

Oracle: the REFERENCE ops, i.e. the official op order with float64 RoPE (itself checked against the
official goldens in tests/parity/test_dit.py with float32 parameters, where REFERENCE is what runs).
"""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from wan_core.models import fused
from wan_core.models.dit import DiTConfig, WanModel
from wan_core.models.rope import grid_table

BF16_ULP = 2.0 ** -7   # spacing of bf16 numbers in [1, 2): one rounding step, relative


def _bf16(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).bfloat16()


@pytest.mark.parametrize("seed", [0, 1])
def test_qk_norm_rope_fast_matches_reference(seed):
    grid, heads, hd = (3, 5, 7), 4, 128
    x = _bf16(2, 105, heads * hd, scale=3.0, seed=seed)
    w = (1 + 0.2 * torch.randn(heads * hd, generator=torch.Generator().manual_seed(seed + 7))).bfloat16()
    table = grid_table(grid, hd)
    ref = fused.REFERENCE.apply_qk(x, w, 1e-6, heads, table)
    fast = fused.FAST.apply_qk(x, w, 1e-6, heads, fused.FAST.rope_for(table))
    assert fast.dtype == ref.dtype == torch.bfloat16 and fast.shape == ref.shape == (2, 105, heads, hd)
    # fp32 instead of fp64 rotation, then rounding to bf16: at most one bf16 step apart, and rarely.
    diff = (fast.float() - ref.float()).abs()
    assert float((diff / ref.float().abs().clamp_min(1e-3)).max()) <= 2 * BF16_ULP
    assert float((diff > 0).float().mean()) < 1e-3
    # The complex table handed straight to FAST ops (S2V passes its own) gives the same result.
    assert torch.equal(fused.FAST.apply_qk(x, w, 1e-6, heads, table), fast)


def test_modulate_and_norms_fast_match_reference():
    x = torch.randn(2, 50, 256, generator=torch.Generator().manual_seed(3)) * 2
    scale, shift = 0.1 * torch.randn(2, 1, 256), 0.1 * torch.randn(2, 1, 256)
    ref = fused.REFERENCE.modulate(x, 1e-6, scale, shift, torch.bfloat16)
    fast = fused.FAST.modulate(x, 1e-6, scale, shift, torch.bfloat16)
    # fp32 mul+add vs fused multiply-add, then one bf16 rounding: at most one bf16 step apart.
    assert float(((fast.float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-2)).max()) <= 2 * BF16_ULP
    xb = _bf16(2, 50, 256, seed=4)
    w = _bf16(256, seed=5)
    assert torch.equal(fused.FAST.rms_norm(xb, w, 1e-6), fused.REFERENCE.rms_norm(xb, w, 1e-6))


def test_pick_block_ops(monkeypatch):
    monkeypatch.delenv("WAN22_COMPILE", raising=False)
    assert fused.pick_block_ops(torch.bfloat16, "cuda") is fused.FAST   # compiling is opt-in
    assert fused.pick_block_ops(torch.float32, "cpu") is fused.REFERENCE
    assert fused.pick_block_ops(torch.float32, "cuda") is fused.REFERENCE   # fp32 parity path
    assert fused.pick_block_ops(torch.bfloat16, "cpu") is fused.FAST
    assert fused.pick_block_ops(torch.bfloat16, "cuda", compile=False) is fused.FAST


def test_tiny_model_fast_ops_match_reference_bf16():
    cfg = DiTConfig(model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_len=32)
    torch.manual_seed(0)
    model = WanModel(cfg).eval()
    with torch.no_grad():
        model.head.head.weight.normal_(0, 0.05)
    model = model.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 8, 6, generator=g)
    ctx = 0.5 * torch.randn(2, 13, 4096, generator=g)
    t = torch.tensor([999.0, 500.0])
    with torch.no_grad():
        assert model.block_ops is fused.REFERENCE
        ref = model(x, t, ctx, 40)
        model.set_block_ops(fused.FAST)
        assert all(b.ops is fused.FAST and b.self_attn.ops is fused.FAST for b in model.blocks)
        fast = model(x, t, ctx, 40)
    # Same bf16 math up to rare one-step roundings (see above) that propagate through 2 blocks:
    # far below the bf16-vs-fp32 difference (~1e-2) that the GPU tests accept.
    assert rel_err(fast, ref) < 2e-3
