"""Request validation and resolution, MoE routing, conditioning helpers and the guidance step.

Pure CPU, no checkpoint: these are the checks that run before any weight is loaded.
"""
from __future__ import annotations

import math

import pytest
import torch

from wan_core.config import (TASKS, GenerateRequest, GuideScale, ModelFacts, NEG_PROMPT_DEFAULT,
                             OffloadMode, ParallelConfig, Solver, Task, check_cfg_guidance,
                             check_frame_num, check_parallel, check_sampling, check_size,
                             check_ulysses_size, parse_size)
from wan_core.errors import ConfigError, InputError
from wan_core.pipeline.conditioning import (best_output_size, i2v_mask, i2v_size, prepare_i2v_image,
                                            prepare_ti2v_image, token_timesteps)
from wan_core.pipeline.experts import Expert, ExpertSchedule
from wan_core.pipeline.video_tasks import resolve_request

T2V, I2V, TI2V = TASKS[Task.T2V_A14B], TASKS[Task.I2V_A14B], TASKS[Task.TI2V_5B]


# -- basic validators -------------------------------------------------------------------------


def test_frame_num_must_be_4n_plus_1():
    for ok in (1, 5, 81, 121):
        check_frame_num(ok)
    with pytest.raises(ConfigError, match=r"frame_num=6 .*use 5 or 9"):
        check_frame_num(6)


def test_size_multiple_and_official():
    assert check_size(T2V, 1280, 720) is None
    assert "not one of the official sizes" in check_size(T2V, 640, 352)
    with pytest.raises(ConfigError, match=r"100\*100.*nearest valid: width 96 or 112, height 96 or 112"):
        check_size(T2V, 100, 100)
    with pytest.raises(ConfigError, match="multiples of 32"):
        check_size(TI2V, 1280, 720)        # the official generate.py default is invalid for ti2v-5B


def test_parse_size():
    assert parse_size("1280*720") == (1280, 720)
    assert parse_size("832x480") == (832, 480)
    with pytest.raises(ConfigError, match="WIDTH\\*HEIGHT"):
        parse_size("big")


@pytest.mark.parametrize("steps,shift,guide,match", [
    (0, 5.0, 5.0, "sample_steps=0"), (1001, 5.0, 5.0, "sample_steps=1001"),
    (40, 0.0, 5.0, "sample_shift=0.0"), (40, math.nan, 5.0, "sample_shift=nan"),
    (40, 5.0, -1.0, "guide scale -1.0"), (40, 5.0, 51.0, "guide scale 51.0")])
def test_sampling_ranges(steps, shift, guide, match):
    with pytest.raises(ConfigError, match=match):
        check_sampling(steps, shift, GuideScale.parse(guide))


def test_guide_scale_parse():
    assert GuideScale.parse("3,4") == GuideScale(3.0, 4.0)     # official tuple order: (low, high)
    assert GuideScale.parse(5) == GuideScale(5.0, 5.0)
    with pytest.raises(ConfigError, match="not a number"):
        GuideScale.parse("high")


A14B = ModelFacts(num_heads=40, moe=True)


def test_parallel_validation_names_values():
    with pytest.raises(ConfigError, match="ulysses_size=3 does not divide the model's 40 .*1, 2, 4, 5, 8"):
        check_parallel(ParallelConfig(num_gpus=3, ulysses_size=3), A14B)
    with pytest.raises(ConfigError, match="num_gpus=4 must equal"):
        check_parallel(ParallelConfig(num_gpus=4, ulysses_size=2), A14B)
    with pytest.raises(ConfigError, match="need num_gpus >= 2"):
        check_parallel(ParallelConfig(dit_fsdp=True), A14B)
    check_parallel(ParallelConfig(num_gpus=4, ulysses_size=2, cfg_parallel=True), A14B)


# Moved from tests/distributed (test_strategies.py, test_strategy_offload.py) with the rules, which
# now live in config.py alone.
def test_ulysses_refuses_heads_not_divisible():
    with pytest.raises(ConfigError, match=r"ulysses_size=4 .* 2 attention heads; valid degrees: 1, 2"):
        check_ulysses_size(2, 4)
    with pytest.raises(ConfigError, match="valid degrees: 1, 2, 4, 5, 8"):
        check_ulysses_size(40, 3)


def test_cfg_parallel_refuses_guidance_one():
    check_cfg_guidance(True, GuideScale(3.0, 4.0))
    check_cfg_guidance(False, GuideScale(1.0, 1.0))
    with pytest.raises(ConfigError, match=r"cfg_parallel needs .* guidance > 1 .* low-noise=1"):
        check_cfg_guidance(True, GuideScale(1.0, 4.0))
    with pytest.raises(ConfigError, match="guide=1"):
        check_cfg_guidance(True, 1.0)


def test_offload_refusals():
    single = ModelFacts(num_heads=24, moe=False)
    check_parallel(ParallelConfig(offload=OffloadMode.EXPERTS), A14B)
    check_parallel(ParallelConfig(offload=OffloadMode.BLOCKS), single)
    with pytest.raises(ConfigError, match="single model; use offload='blocks'"):
        check_parallel(ParallelConfig(offload=OffloadMode.EXPERTS), single)
    with pytest.raises(ConfigError, match="cannot be combined with dit_fsdp"):
        check_parallel(ParallelConfig(num_gpus=2, ulysses_size=2, dit_fsdp=True, offload=OffloadMode.BLOCKS),
                       A14B)
    with pytest.raises(ConfigError, match="single model"):
        check_parallel(ParallelConfig(offload=OffloadMode.EXPERTS), single)
    with pytest.raises(ConfigError, match="valid degrees: 1, 2, 3, 4, 6, 8"):
        check_parallel(ParallelConfig(num_gpus=5, ulysses_size=5), single)


# -- request resolution -----------------------------------------------------------------------


def test_t2v_defaults_are_official():
    plan = resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p"))
    assert (plan.width, plan.height, plan.frame_num) == (1280, 720, 81)
    assert (plan.steps, plan.shift, plan.solver) == (40, 12.0, Solver.UNIPC)
    assert plan.schedule == ExpertSchedule(GuideScale(3.0, 4.0), 0.875)
    assert plan.latent_shape == (16, 21, 90, 160)
    assert plan.seq_len == 75600                       # official text2video.py: seq_len = tokens
    assert plan.neg_prompt == NEG_PROMPT_DEFAULT and plan.warnings == ()


def test_default_negative_prompt_for_none_and_empty():
    for neg in (None, ""):
        assert resolve_request(Task.I2V_A14B, GenerateRequest(prompt="p", neg_prompt=neg,
                                                              image=torch.rand(3, 60, 80))).neg_prompt == NEG_PROMPT_DEFAULT
    assert resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", neg_prompt="blurry")).neg_prompt == "blurry"


@pytest.mark.parametrize("task,size,frames,sp,seq_len", [
    (Task.T2V_A14B, (832, 480), 81, 1, 32760),
    (Task.TI2V_5B, (1280, 704), 121, 1, 27280),
    (Task.TI2V_5B, (1280, 704), 121, 3, 27282),      # ceil(tokens / sp) * sp
    (Task.T2V_A14B, (64, 48), 5, 5, 25),
])
def test_seq_len(task, size, frames, sp, seq_len):
    plan = resolve_request(task, GenerateRequest(prompt="p", size=size, frame_num=frames), ulysses_size=sp)
    assert plan.seq_len == seq_len and plan.seq_len % sp == 0


def test_image_rules():
    with pytest.raises(InputError, match="i2v-A14B needs an input image"):
        resolve_request(Task.I2V_A14B, GenerateRequest(prompt="p"))
    with pytest.raises(InputError, match="t2v-A14B does not take an image"):
        resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", image=torch.rand(3, 8, 8)))
    with pytest.raises(InputError, match=r"\[3, H, W\]"):
        resolve_request(Task.I2V_A14B, GenerateRequest(prompt="p", image=torch.rand(4, 8, 8)))


def test_single_model_guidance_and_boundary():
    with pytest.raises(ConfigError, match="single model; give one guide scale"):
        resolve_request(Task.TI2V_5B, GenerateRequest(prompt="p", size=(1280, 704), guide_scale=GuideScale(3, 4)))
    plan = resolve_request(Task.TI2V_5B, GenerateRequest(prompt="p", size=(1280, 704), boundary=0.5))
    assert plan.schedule.boundary is None and "ignored" in plan.warnings[0]
    with pytest.raises(ConfigError, match="boundary=1.5"):
        resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", boundary=1.5))


def test_bad_frame_num_and_size_in_request():
    with pytest.raises(ConfigError, match="frame_num=80"):
        resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", frame_num=80))
    with pytest.raises(ConfigError, match="nearest valid"):
        resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", size=(1000, 700)))


def test_negative_seed_is_random_and_in_range():
    seeds = {resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", seed=-1)).seed for _ in range(3)}
    assert all(0 <= s for s in seeds) and len(seeds) > 1
    assert resolve_request(Task.T2V_A14B, GenerateRequest(prompt="p", seed=7)).seed == 7


# -- MoE routing ------------------------------------------------------------------------------


def test_expert_routing_official_defaults():
    from wan_core.pipeline.schedulers import make_scheduler

    def split(spec):
        sched = make_scheduler(Solver.UNIPC, spec.sample_steps, spec.sample_shift)
        plan = ExpertSchedule(GuideScale(*spec.guide_scale), spec.boundary).plan(sched.timesteps)
        return [e for e, _ in plan].count(Expert.HIGH_NOISE), [e for e, _ in plan].count(Expert.LOW_NOISE), plan

    high, low, plan = split(T2V)       # §5.4: 26 high-noise steps (t 999..877), 14 low-noise
    assert (high, low) == (26, 14)
    assert plan[0] == (Expert.HIGH_NOISE, 4.0) and plan[-1] == (Expert.LOW_NOISE, 3.0)
    high, low, _ = split(I2V)          # 15 high (999..902), 25 low
    assert (high, low) == (15, 25)


def test_expert_boundary_is_inclusive():
    s = ExpertSchedule(GuideScale(3.0, 4.0), 0.875)
    assert s.expert_for(875) == Expert.HIGH_NOISE and s.expert_for(874) == Expert.LOW_NOISE
    assert ExpertSchedule(GuideScale(5.0, 5.0), None).expert_for(999) == Expert.SINGLE


# -- conditioning -----------------------------------------------------------------------------


def test_i2v_sizes():
    assert i2v_size(80, 60, 64 * 48) == (8, 6)             # the tiny golden run: 64x48
    assert i2v_size(1280, 720, 1280 * 720) == (160, 90)
    # Seeded: bicubic overshoot on unlucky random pixels can pass -1.5 (the run order decided it).
    img = prepare_i2v_image(torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(0)), 64 * 48)
    assert (img.width, img.height) == (64, 48) and img.pixels.shape == (3, 48, 64)
    assert float(img.pixels.min()) >= -1.5                # [-1, 1] up to bicubic overshoot
    with pytest.raises(InputError, match="aspect ratio is too extreme"):
        prepare_i2v_image(torch.rand(3, 2, 400), 64 * 48)


def test_i2v_mask():
    m = i2v_mask(5, 6, 8)
    assert m.shape == (4, 2, 6, 8)
    assert bool((m[:, 0] == 1).all()) and bool((m[:, 1] == 0).all())


def test_ti2v_best_output_size():
    assert best_output_size(96, 64, 32, 32, 64 * 64) == (64, 64)        # README of the goldens
    w, h = best_output_size(1280, 720, 32, 32, 1280 * 704)
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 1280 * 704
    img = prepare_ti2v_image(torch.rand(3, 64, 96), 64 * 64)
    assert (img.width, img.height) == (64, 64) and img.pixels.shape == (3, 64, 64)


def test_token_timesteps():
    t = token_timesteps(700, lat_f=3, lat_h=4, lat_w=6, seq_len=41, first_frame_clean=True)
    assert t.shape == (1, 41) and t.dtype == torch.float32
    assert bool((t[0, :6] == 0).all()) and bool((t[0, 6:] == 700).all())    # 2x3 tokens per frame
    assert bool((token_timesteps(999, 3, 4, 6, 41) == 999).all())


# -- the guidance step ------------------------------------------------------------------------


class _Linear(torch.nn.Module):
    """A stand-in DiT whose output depends on x, t, the context and y."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context, seq_len, y=None):
        self.calls.append(x.shape[0])
        ctx = torch.stack([c.mean() for c in context]).view(-1, 1, 1, 1, 1)
        out = x * 0.5 + ctx + t.float().view(x.shape[0], -1).mean(1).view(-1, 1, 1, 1, 1) / 1000
        return out + (y.mean() if y is not None else 0)


def _inputs(guide):
    from wan_core.pipeline.denoise import DenoiseInputs, scalar_timestep

    return DenoiseInputs(latent=torch.randn(4, 2, 3, 3), context=torch.randn(5, 8), context_null=torch.randn(7, 8),
                         seq_len=9, schedule=ExpertSchedule(GuideScale(guide, guide)), timestep_input=scalar_timestep("cpu"))


def test_guidance_batched_equals_two_calls_and_formula():
    from wan_core.distributed.context import DistContext
    from wan_core.pipeline.denoise import Guidance

    inp = _inputs(4.0)
    dist = DistContext.single("cpu")
    model = _Linear()
    t = torch.tensor([900])
    batched = Guidance(inp, dist, batch_cfg=True)(model, Expert.SINGLE, inp.latent, t, 4.0)
    assert model.calls == [2]
    model.calls.clear()
    two = Guidance(inp, dist, batch_cfg=False)(model, Expert.SINGLE, inp.latent, t, 4.0)
    assert model.calls == [1, 1]
    assert torch.allclose(batched, two, atol=1e-6)
    cond = model(inp.latent[None], t, [inp.context], 9)[0]
    uncond = model(inp.latent[None], t, [inp.context_null], 9)[0]
    assert torch.allclose(two, uncond + 4.0 * (cond - uncond), atol=1e-6)


def test_guidance_one_skips_the_unconditional_branch():
    from wan_core.distributed.context import DistContext
    from wan_core.pipeline.denoise import Guidance

    inp = _inputs(1.0)
    model = _Linear()
    out = Guidance(inp, DistContext.single("cpu"))(model, Expert.SINGLE, inp.latent, torch.tensor([10]), 1.0)
    assert model.calls == [1]
    assert torch.allclose(out, model(inp.latent[None], torch.tensor([10]), [inp.context], 9)[0])


def test_offload_default_follows_official_offload_model():
    import argparse

    from wan_core.cli import build_parallel

    def par(task, **kw):
        ns = argparse.Namespace(num_gpus=(1, None), cfg_parallel=False, ulysses_size=None, offload=None,
                                offload_model=None, dit_fsdp=False, t5_fsdp=False, t5_cpu=False)
        for k, v in kw.items():
            setattr(ns, k, v)
        return build_parallel(ns, task)

    assert par(Task.T2V_A14B).offload == OffloadMode.EXPERTS          # one GPU: official offload_model=True
    assert par(Task.T2V_A14B, offload_model=False).offload == OffloadMode.NONE
    assert par(Task.TI2V_5B).offload == OffloadMode.NONE
    p = par(Task.T2V_A14B, num_gpus=(4, None), cfg_parallel=True)
    assert (p.ulysses_size, p.cfg_degree, p.offload) == (2, 2, OffloadMode.NONE)
    assert par(Task.T2V_A14B, num_gpus=(2, (0, 3))).gpu_ids == (0, 3)
