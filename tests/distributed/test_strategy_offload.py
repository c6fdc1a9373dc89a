"""CPU offload modes in one process: the schedule of loads/unloads and unchanged outputs.

On a CPU device the moves are no-ops (the master copy is the resident copy), but the same state
machine runs, so the order of loads and unloads and the residency window are checked here; the
copies themselves are checked on CUDA in test_strategy_offload_gpu (marked gpu). Outputs must be
bit-identical: nothing is computed differently, only made resident.
"""
from __future__ import annotations

import torch

from wan_core.config import GuideScale

H, L = "high_noise_model", "low_noise_model"


def _synthetic(layers: int, seed: int = 0):
    from wan_core.models.dit import DiTConfig, WanModel

    torch.manual_seed(seed)
    cfg = DiTConfig(model_type="t2v", in_dim=16, out_dim=16, dim=128, ffn_dim=256, num_heads=2,
                    num_layers=layers, text_len=16)
    model = WanModel(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _inputs(cfg, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 6, generator=g)
    ctx = [torch.randn(5, cfg.text_dim, generator=g)]
    return x, torch.tensor([900]), ctx, 2 * 2 * 3


def test_block_offload_window_and_identical_output():
    from wan_core.distributed.offload import apply_block_offload

    model = _synthetic(layers=4)
    x, t, ctx, seq = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(x, t, ctx, seq)
    off = apply_block_offload(model, "cpu", prefetch=1)
    seen = []
    probes = [b.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, off.resident())))
              for i, b in enumerate(model.blocks)]   # registered after the offload hooks: runs after them
    with torch.no_grad():
        out = model(x, t, ctx, seq)
        out2 = model(x, t, ctx, seq)
    assert torch.equal(out, ref) and torch.equal(out2, ref)
    # While block i runs, exactly block i and the prefetched next one (wrapping to 0) are resident.
    assert seen[:4] == [(0, [0, 1]), (1, [1, 2]), (2, [2, 3]), (3, [0, 3])]
    assert seen[4:] == seen[:4]
    assert off.trace[:8] == [("load", 0), ("load", 1), ("unload", 0), ("load", 2), ("unload", 1),
                             ("load", 3), ("unload", 2), ("load", 0)]
    # The second forward finds block 0 already prefetched: no extra load.
    assert off.trace[8:10] == [("unload", 3), ("load", 1)]
    for p in probes:
        p.remove()
    off.remove()
    n = len(off.trace)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, seq), ref)
    assert len(off.trace) == n, "hooks still active after remove()"
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.blocks)


def test_block_offload_keeps_all_when_window_covers_model():
    from wan_core.distributed.offload import apply_block_offload

    model = _synthetic(layers=2)
    x, t, ctx, seq = _inputs(model.cfg)
    off = apply_block_offload(model, "cpu", prefetch=1)
    with torch.no_grad():
        model(x, t, ctx, seq)
        model(x, t, ctx, seq)
    assert off.trace == [("load", 0), ("load", 1)]


def test_expert_offload_denoise_identical_and_one_expert_at_a_time(tiny_dir):
    from wan_core.distributed.context import DistContext
    from wan_core.distributed.offload import ExpertOffloader
    from wan_core.loading.checkpoint import load_dit
    from wan_core.pipeline.denoise import DenoiseInputs, denoise, scalar_timestep
    from wan_core.pipeline.experts import Expert, ExpertSchedule
    from wan_core.pipeline.parallelize import ResidentModels
    from wan_core.pipeline.progress import RunHooks
    from wan_core.pipeline.schedulers import make_scheduler

    base = tiny_dir / "ckpt" / "t2v-A14B"
    models = {Expert(k): load_dit(base / k, dtype=torch.float32, device="cpu") for k in (H, L)}
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 2, 4, 6, generator=g)
    c, cn = torch.randn(4, 4096, generator=g), torch.randn(6, 4096, generator=g)

    def run(provider):
        inputs = DenoiseInputs(latent=x, context=c, context_null=cn, seq_len=12,
                               schedule=ExpertSchedule(GuideScale(3.0, 4.0), 0.9),
                               timestep_input=scalar_timestep("cpu"))
        return denoise(provider, make_scheduler("unipc", 4, 5.0), inputs, DistContext.single("cpu"),
                       RunHooks())

    ref = run(ResidentModels(models))
    hi, lo = Expert(H), Expert(L)
    # The loop prefetches the low-noise expert during the last high-noise step (room for both on
    # a CPU device); the high-noise one is dropped at the switch.
    off = ExpertOffloader(models, "cpu")
    assert torch.equal(run(off), ref)
    assert off.trace == [("load", hi), ("load", lo), ("unload", hi)]
    assert off.resident() == [lo]
    # Without room for both (prefetch refused): one expert at a time, released before the copy.
    off2 = ExpertOffloader(models, "cpu", allow_prefetch=False)
    assert torch.equal(run(off2), ref)
    assert off2.trace == [("load", hi), ("unload", hi), ("load", lo)]
    off2.release()
    assert off2.resident() == []
