"""WanModel on CUDA (marked gpu; run on the device machine: pytest -m gpu tests/gpu/test_dit_gpu.py -s).

Self-contained (random weights), so nothing has to be carried to the device machine:
- bf16 parameters on CUDA against fp32 on CPU, every attention backend that resolves there;
- fp32 parameters on CUDA (TF32 off) against fp32 on CPU: the same math, so 1e-5;
- real-size A14B expert (random bf16 weights), one forward at 480P and 720P: time and peak memory.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from conftest import rel_err
from tests.gpu._cuda import tf32_off

pytestmark = pytest.mark.gpu

TINY = dict(model_type="t2v", in_dim=16, out_dim=16, dim=256, ffn_dim=512, num_heads=2, num_layers=2,
            text_len=32)


def _need_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def _tiny_inputs(per_token: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 6, generator=g)
    ctx = 0.5 * torch.randn(1, 13, 4096, generator=g)
    seq_len = 41
    t = torch.full((1, seq_len), 700.0) if per_token else torch.tensor([999])
    if per_token:
        t[:, :12] = 0
    return x, t, ctx, seq_len


def _tiny_model():
    from wan_core.models.dit import DiTConfig, WanModel

    torch.manual_seed(0)
    model = WanModel(DiTConfig(**TINY)).eval()
    with torch.no_grad():   # the official init zeroes the head; random values make it count
        model.head.head.weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("per_token", [False, True])
def test_cuda_matches_cpu(per_token):
    _need_cuda()
    from wan_core.models.attention import resolve_backend

    ref = _tiny_model()
    x, t, ctx, seq_len = _tiny_inputs(per_token)
    with torch.no_grad():
        expected = ref(x, t, ctx, seq_len)

    # fp32 on CUDA, TF32 off: same math as the CPU, only summation order differs.
    with tf32_off():
        m32 = copy.deepcopy(ref).cuda()
        with torch.no_grad():
            out = m32(x.cuda(), t.cuda(), ctx.cuda(), seq_len)
        assert out.dtype == torch.float32
        err = rel_err(out.cpu(), expected)
        print(f"fp32 cuda (sdpa) rel_err {err:.2e}")
        assert err < 1e-5

    # bf16 parameters: big linears and attention in bf16 (official GPU policy), ~4e-3 expected.
    m16 = copy.deepcopy(ref).to("cuda", torch.bfloat16)
    for backend in ("sdpa", "auto"):
        kernel = resolve_backend(backend, "cuda")
        m16.set_attention_kernel(kernel)
        with torch.no_grad():
            out = m16(x.cuda(), t.cuda(), ctx.cuda(), seq_len)
        assert out.dtype == torch.float32
        err = rel_err(out.cpu(), expected)
        print(f"bf16 cuda ({kernel.name}) rel_err {err:.2e}")
        assert err < 2e-2


@pytest.mark.parametrize("ops_name", ["fast", "compile"])
def test_block_ops_cuda_bf16(ops_name):
    """FAST block ops (fp32 RoPE, eager) and their torch.compile'd kernels on CUDA, bf16 parameters,
    against fp32 on CPU: the same tolerance as the reference ops' bf16 check above (2e-2: bf16
    matmuls and attention), and against the reference ops on CUDA: 5e-3 (only fp32-vs-fp64 RoPE and
    fused roundings differ, each at most one bf16 step)."""
    _need_cuda()
    from wan_core.models import fused
    from wan_core.models.attention import resolve_backend

    ref = _tiny_model()
    x, t, ctx, seq_len = _tiny_inputs(False)
    with torch.no_grad():
        expected = ref(x, t, ctx, seq_len)
    m16 = copy.deepcopy(ref).to("cuda", torch.bfloat16)
    m16.set_attention_kernel(resolve_backend("auto", "cuda"))
    with torch.no_grad():
        ref16 = m16(x.cuda(), t.cuda(), ctx.cuda(), seq_len).cpu()
        ops = fused.FAST if ops_name == "fast" else fused.compiled_ops(fused.FAST)
        m16.set_block_ops(ops)
        out = m16(x.cuda(), t.cuda(), ctx.cuda(), seq_len).cpu()
    if ops_name == "compile":
        assert not any(getattr(ops, k).failed for k in ("modulate", "gated_residual", "norm_affine",
                                                        "rms_norm", "qk_norm_rope")), "compile fell back"
    err, err16 = rel_err(out, expected), rel_err(out, ref16)
    print(f"bf16 cuda {ops.name}: rel_err vs fp32 cpu {err:.2e}, vs reference ops {err16:.2e}")
    assert err < 2e-2 and err16 < 5e-3


def _real_expert(device="cuda"):
    from wan_core.models.dit import DiTConfig, WanModel

    cfg = DiTConfig(model_type="t2v", in_dim=16, out_dim=16, dim=5120, ffn_dim=13824, num_heads=40,
                    num_layers=40, text_len=512)
    with torch.device("meta"):
        model = WanModel(cfg)
    model = model.to(torch.bfloat16).to_empty(device=device).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm3.weight" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0, 0.02)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("size", ["480P", "720P"])
def test_a14b_expert_forward_time_and_memory(size):
    """One A14B forward with random bf16 weights: seconds and peak GB (for the record, printed).

    The official code on an H200 (shared/gpu/README.md) takes 26.84 s per 720P step (2 forwards) with
    SDPA cuDNN and 63.7 GB peak; 7.25 s per 480P step with FA4.
    Measured here (H200, torch 2.11, SDPA): 480P 3.61 s/forward, peak 31.5 GB; 720P 13.10 s/forward,
    peak 37.7 GB (weights 26.7 GB).
    """
    _need_cuda()
    from wan_core.models.attention import resolve_backend

    f, h, w = (21, 60, 104) if size == "480P" else (21, 90, 160)
    seq_len = f * (h // 2) * (w // 2)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = _real_expert()
    model.set_attention_kernel(resolve_backend("auto", "cuda"))
    weights_gb = torch.cuda.memory_allocated() / 2**30
    x = torch.randn(1, 16, f, h, w, device="cuda")
    ctx = 0.5 * torch.randn(1, 500, 4096, device="cuda")
    t = torch.tensor([999], device="cuda")
    with torch.no_grad():
        out = model(x, t, ctx, seq_len)
        torch.cuda.synchronize()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = model(x, t, ctx, seq_len)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    kernel = model.blocks[0].self_attn.attn.kernel.name
    print(f"A14B {size} ({seq_len} tokens, {kernel}): {min(times):.2f} s/forward, weights {weights_gb:.1f} GB, "
          f"peak {peak:.1f} GB")
    assert out.shape == x.shape and torch.isfinite(out).all()
    del model, out
    torch.cuda.empty_cache()
