"""S2V-14B against the official outputs: the DiT forward (golden `s2v`) and the whole two-clip
`WanS2V.generate()` run (golden `pipe_s2v`).

Tolerances (rel_err = max|ours - golden| / max|golden|):
- DiT forward: 1e-5. Both sides are float32 with RoPE and the timestep sinusoid in float64; only
  summation order can differ (measured: 0.0 at batch 1, 5e-7 batched). Any real mistake (RoPE
  position of the reference/motion tokens, conjugation, modulation segment, AdaLN order, layer
  weights) costs >1e-3 (dropping the motion tokens alone changes the output by 2.5e-2).
- Pipeline, stage by stage: every DiT call's timestep exactly; its output 1e-4 (errors of ~1e-6
  grow through two solver steps and the VAE encode of the motion frames between clips); the VAE
  decoder inputs 1e-4; the final video 1e-4.
"""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import rel_err

TOL_DIT = 1e-5
TOL_PIPE = 1e-4


@pytest.fixture(scope="module")
def s2v_model(tiny_dir):
    from wan_core.loading.s2v import load_s2v_dit

    return load_s2v_dit(tiny_dir / "ckpt" / "s2v-14B", dtype=torch.float32, device="cpu")


def _call(model, g, t, drop, batch_audio=None, **kw):
    audio = g["in_audio"] if batch_audio is None else batch_audio
    with torch.no_grad():
        return model(g["in_x"][None], torch.tensor([t]), [g["in_ctx"]], g["in_ref"][None],
                     g["in_motion"][None], g["in_cond"][None], audio, motion_frames=[73, 19],
                     drop_motion_frames=bool(drop), **kw)


@pytest.mark.parametrize("t", [999, 300])
@pytest.mark.parametrize("drop", [0, 1])
def test_forward(s2v_model, golden, t, drop):
    g = golden("s2v")
    out = _call(s2v_model, g, t, drop)
    assert out.shape == (1, 16, 4, 16, 16) and out.dtype == torch.float32
    err = rel_err(out[0], g[f"out_t{t}_drop{drop}"])
    assert err < TOL_DIT, err


def test_inputs_matter(s2v_model, golden):
    """A check that cannot fail is a defect: each conditioning input changes the output."""
    g = golden("s2v")
    ref = g["out_t999_drop0"]
    assert rel_err(_call(s2v_model, g, 999, 0, batch_audio=g["in_audio"] * 0)[0], ref) > 1e-2
    assert rel_err(g["out_t999_drop1"], ref) > 1e-2
    with torch.no_grad():
        no_pose = s2v_model(g["in_x"][None], torch.tensor([999]), [g["in_ctx"]], g["in_ref"][None],
                            g["in_motion"][None], None, g["in_audio"], motion_frames=[73, 19])
    assert rel_err(no_pose[0], ref) > 1e-2


def test_batched_cfg(s2v_model, golden):
    """cond and uncond (other context, audio * 0) in one batch-2 forward, shared ref/motion/cond."""
    g = golden("s2v")
    x = g["in_x"][None].expand(2, -1, -1, -1, -1)
    audio = torch.cat([g["in_audio"], g["in_audio"] * 0])
    ctx = [g["in_ctx"], g["in_ctx"][:5]]
    with torch.no_grad():
        out = s2v_model(x, torch.tensor([999, 999]), ctx, g["in_ref"][None], g["in_motion"][None],
                        g["in_cond"][None], audio, motion_frames=[73, 19])
    assert rel_err(out[0], g["out_t999_drop0"]) < TOL_DIT
    single = _call(s2v_model, {**g, "in_ctx": g["in_ctx"][:5]}, 999, 0, batch_audio=g["in_audio"] * 0)
    assert rel_err(out[1], single[0]) < TOL_DIT


def test_bf16_close(tiny_dir, golden):
    """bf16 parameters (the official S2V param dtype) stay close to the float32 golden."""
    from wan_core.loading.s2v import load_s2v_dit

    model = load_s2v_dit(tiny_dir / "ckpt" / "s2v-14B", dtype=torch.bfloat16)
    g = golden("s2v")
    err = rel_err(_call(model, g, 999, 0)[0], g["out_t999_drop0"])
    assert err < 5e-2, err      # bf16 weights/activations: ~1e-2 expected


# ---------------------------------------------------------------------------------------------
# Token sharding: ranks as threads


class _Group:
    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots = [None] * world

    def exchange(self, rank, value):
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class _Sharding:
    def __init__(self, group, rank):
        self.group, self.rank, self.degree = group, rank, group.world

    def split(self, t, dim):
        return torch.chunk(t, self.degree, dim=dim)[self.rank]

    def gather(self, t, dim):
        return torch.cat(self.group.exchange(self.rank, t), dim=dim)


class _GatherKV(torch.nn.Module):
    """Sequence-parallel attention for any degree: local queries attend to the gathered keys/values."""

    def __init__(self, inner, group, rank):
        super().__init__()
        self.inner, self.group, self.rank = inner, group, rank

    def forward(self, q, k, v, k_lens):
        k = torch.cat(self.group.exchange(self.rank, k), dim=1)
        v = torch.cat(self.group.exchange(self.rank, v), dim=1)
        return self.inner(q, k, v, k_lens)


@pytest.mark.parametrize("world,drop", [(2, 0), (3, 0), (3, 1)])
def test_token_sharding_threads(tiny_dir, golden, world, drop):
    """The sequence (416 or 320 tokens) split over 2 or 3 simulated ranks (3: zero-padded to a
    multiple, padded keys masked) gives the single-device output; the audio injection gathers."""
    from wan_core.loading.s2v import load_s2v_dit

    g = golden("s2v")
    group = _Group(world)
    outs, errors = [None] * world, []

    def run(rank):
        try:
            model = load_s2v_dit(tiny_dir / "ckpt" / "s2v-14B", dtype=torch.float32)
            model.token_sharding = _Sharding(group, rank)
            for block in model.blocks:
                block.self_attn.attn = _GatherKV(block.self_attn.attn, group, rank)
            outs[rank] = _call(model, g, 999, drop)
        except BaseException as exc:
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors
    for rank in range(world):
        err = rel_err(outs[rank][0], g[f"out_t999_drop{drop}"])
        assert err < TOL_DIT, (rank, err)
