"""T2V-A14B, I2V-A14B and TI2V-5B: request resolution (pure, before any heavy work) and the run.

`resolve_request` turns a `GenerateRequest` into a `RunPlan`: every default filled in from the
task's official config, every value validated (messages name the value and the fix), the image
preprocessed, the latent shape and `seq_len` computed. It needs no model, so the CLI and the nodes
call it before loading anything.

`run_video_task` then follows the official `generate()` of WanT2V / WanI2V / WanTI2V
(`wan/text2video.py`, `image2video.py`, `textimage2video.py`): encode prompt + negative prompt,
draw the noise on a CPU generator, build the task's conditioning, denoise, decode on rank 0.
`VideoPipeline` (end of file) is the family object `WanEngine` dispatches these tasks to.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from ..config import (TASKS, GenerateRequest, GenerateResult, GuideScale, Solver, Task, TaskSpec,
                      check_frame_num, check_sampling, check_size, padded_seq_len, parse_size)
from ..errors import Cancelled, ConfigError, InputError
from ..io.video import video_to_uint8
from .conditioning import (I2VImage, TI2VImage, i2v_mask, i2v_vae_input, prepare_i2v_image,
                           prepare_ti2v_image, token_timesteps)
from .denoise import DenoiseInputs, ModelProvider, denoise, scalar_timestep
from .experts import ExpertSchedule
from .progress import Phase, RunHooks
from .text import prompt_contexts

Tensor = torch.Tensor
Trace = Optional[Callable[[str, Tensor], None]]

VIDEO_TASKS = (Task.T2V_A14B, Task.I2V_A14B, Task.TI2V_5B)
Z_DIM = {"2.1": 16, "2.2": 48}


@dataclass(frozen=True)
class RunPlan:
    """A fully resolved and validated request."""

    task: TaskSpec
    prompt: str
    neg_prompt: str
    frame_num: int
    width: int                 # output pixel size
    height: int
    latent_shape: tuple[int, int, int, int]    # (C, f, h, w)
    seq_len: int
    steps: int
    shift: float
    solver: Solver
    seed: int
    schedule: ExpertSchedule
    image: Union[I2VImage, TI2VImage, None] = None
    decode: bool = True
    warnings: tuple[str, ...] = field(default_factory=tuple)
    init_latent: Optional[Tensor] = None       # [C, f, h, w] normalised, the shape of latent_shape
    denoise: float = 1.0                       # 0: decode init_latent only
    context: Optional[Tensor] = None           # precomputed prompt embeddings [L, text_dim]
    neg_context: Optional[Tensor] = None

    @property
    def tokens(self) -> int:
        c, f, h, w = self.latent_shape
        return f * (h // 2) * (w // 2)

    @property
    def guide_scale(self) -> GuideScale:
        return self.schedule.guide


def random_seed() -> int:
    """The official `--base_seed -1`: `random.randint(0, sys.maxsize)`."""
    return random.randint(0, sys.maxsize)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed {seed!r} is not an integer")
    if seed < 0:
        return random_seed()
    if seed > 0xFFFF_FFFF_FFFF_FFFF:
        raise ConfigError(f"seed {seed} is too large; use 0..{0xFFFF_FFFF_FFFF_FFFF}")
    return seed


def _guide(spec: TaskSpec, value) -> GuideScale:
    if value is None:
        low, high = spec.guide_scale
        return GuideScale(low, high)
    g = value   # GenerateRequest made it a GuideScale
    if not spec.moe and g.low_noise != g.high_noise:
        raise ConfigError(f"{spec.task.value} has a single model; give one guide scale, not "
                          f"{g.low_noise},{g.high_noise}")
    return g


def _switch_step(spec: TaskSpec, value, steps: int, warnings: list[str]) -> Optional[int]:
    """`switch_step`: None or 0 = use the boundary; N in 1..steps = steps [0, N) on the high-noise
    expert (N == steps: high-noise only)."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"switch_step={value!r}: give a whole number of steps >= 0 (0 = use the boundary)")
    if not spec.moe:
        warnings.append(f"switch_step={value} ignored: {spec.task.value} has a single model")
        return None
    if value > steps:
        raise ConfigError(f"switch_step={value} is beyond the {steps} sampling steps; use 1..{steps} "
                          "(steps before it run the high-noise expert), or 0 to use the boundary")
    return value


def _boundary(spec: TaskSpec, value, warnings: list[str]) -> Optional[float]:
    if not spec.moe:
        if value is not None:
            warnings.append(f"boundary={value} ignored: {spec.task.value} has a single model")
        return None
    b = spec.boundary if value is None else float(value)
    if not (0.0 <= b <= 1.0) or math.isnan(b):
        raise ConfigError(f"boundary={value} is out of range; use a fraction in [0, 1] "
                          f"(official: {spec.boundary}; 0 = high-noise expert only, 1 = low-noise only)")
    return b


def resolve_request(task: Union[Task, str, TaskSpec], request: GenerateRequest, ulysses_size: int = 1) -> RunPlan:
    """Fill in the task defaults and validate every field; raise ConfigError / InputError."""
    spec = task if isinstance(task, TaskSpec) else TASKS[Task.parse(task)]
    if spec.task not in VIDEO_TASKS:
        raise ConfigError(f"{spec.task.value} is not a text/image-to-video task; use the S2V pipeline")
    warnings: list[str] = []

    if not isinstance(request.prompt, str):
        raise InputError(f"prompt must be a string, got {type(request.prompt).__name__}")
    neg = request.neg_prompt if request.neg_prompt else spec.neg_prompt   # None or "" -> official default

    frame_num = spec.frame_num if request.frame_num is None else int(request.frame_num)
    check_frame_num(frame_num)

    size = request.size if request.size is not None else parse_size(spec.default_size)
    if isinstance(size, str):
        size = parse_size(size)
    width, height = int(size[0]), int(size[1])
    warn = check_size(spec, width, height)
    if warn:
        warnings.append(warn)

    steps = spec.sample_steps if request.steps is None else int(request.steps)
    shift = spec.sample_shift if request.shift is None else float(request.shift)
    guide = _guide(spec, request.guide_scale)
    check_sampling(steps, shift, guide)
    boundary = _boundary(spec, request.boundary, warnings)
    switch_step = _switch_step(spec, request.switch_step, steps, warnings)
    solver = request.solver
    seed = _check_seed(request.seed)

    image = request.image
    decode_only = request.init_latent is not None and float(request.denoise) == 0.0
    if decode_only:
        image = None          # nothing is generated: the latent is only decoded
    elif spec.needs_image and image is None:
        raise InputError(f"{spec.task.value} needs an input image (--image FILE)")
    if image is not None and not spec.accepts_image:
        raise InputError(f"{spec.task.value} does not take an image; use i2v-A14B or ti2v-5B for "
                         "image-to-video")

    stride_t, stride_h, stride_w = spec.vae_stride
    lat_f = (frame_num - 1) // stride_t + 1
    prepared = None
    if spec.task == Task.I2V_A14B and image is not None:
        prepared = prepare_i2v_image(image, max_area=width * height)
        width, height = prepared.width, prepared.height
    elif spec.task == Task.TI2V_5B and image is not None:
        prepared = prepare_ti2v_image(image, max_area=width * height, multiple=spec.size_multiple)
        width, height = prepared.width, prepared.height
    latent_shape = (Z_DIM[spec.vae], lat_f, height // stride_h, width // stride_w)
    tokens = lat_f * (latent_shape[2] // spec.patch_size[1]) * (latent_shape[3] // spec.patch_size[2])
    seq_len = padded_seq_len(tokens, ulysses_size)

    init_latent, denoise = check_init_latent(request, latent_shape, steps)
    return RunPlan(task=spec, prompt=request.prompt, neg_prompt=neg, frame_num=frame_num,
                   width=width, height=height, latent_shape=latent_shape, seq_len=seq_len,
                   steps=steps, shift=shift, solver=solver, seed=seed,
                   schedule=ExpertSchedule(guide=guide, boundary=boundary, switch_step=switch_step), image=prepared,
                   decode=bool(request.decode), warnings=tuple(warnings), init_latent=init_latent,
                   denoise=denoise, context=request.context, neg_context=request.neg_context)


def check_init_latent(request: GenerateRequest, latent_shape, steps: int) -> tuple[Optional[Tensor], float]:
    """-> (init_latent float32 or None, denoise), checked against the run's latent shape."""
    from .schedulers import denoise_schedule

    denoise = float(request.denoise)
    latent = request.init_latent
    if latent is None:
        if denoise != 1.0:
            raise InputError(f"denoise={denoise:g} needs a latent to start from: connect a LATENT "
                             "(video-to-video), or set denoise to 1")
        return None, denoise
    if not isinstance(latent, torch.Tensor) or tuple(latent.shape) != tuple(latent_shape):
        got = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise InputError(f"the input latent has shape {got} but this run's latent is "
                         f"{tuple(latent_shape)} (channels, frames, height, width): give a latent of "
                         "this task's VAE, or the size and length it was made with")
    if denoise != 0.0:
        denoise_schedule(steps, denoise)        # ConfigError for a value outside (0, 1]
    return latent.float(), denoise


def initial_noise(shape, seed: int, device) -> Tensor:
    """Float32 noise from a CPU generator, then moved: one seed gives one video on any device."""
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(device)


@dataclass
class Components:
    """What a run uses; built once by the engine."""

    encode_text: Callable[[list[str]], list[Tensor]]     # prompts -> [L_i, 4096] each
    vae_encode: Callable[[Tensor], Tensor]                # [B,3,F,H,W] in [-1,1] -> [B,C,f,h,w]
    vae_decode: Callable[[Tensor], Tensor]                # [B,C,f,h,w] -> [B,3,F,H,W] in [-1,1]
    models: ModelProvider
    device: torch.device
    make_scheduler: Callable                              # (solver, steps, shift) -> scheduler
    decode_all_ranks: bool = False
    """vae_decode is a collective (split across the ranks, distributed/vae_split.py): every rank
    calls it; rank 0 keeps the video."""


@dataclass
class RunOutput:
    latent: Tensor                    # [C, f, h, w] float32 (device)
    video: Optional[Tensor]           # [3, F, H, W] float in [-1, 1], rank 0 only
    timings: dict


def _task_conditioning(plan: RunPlan, comp: Components, noise: Tensor, trace: Trace):
    """-> (initial latent, y, post_step, timestep_input) of the task."""
    device = comp.device
    task = plan.task.task
    c, lat_f, lat_h, lat_w = plan.latent_shape
    if task == Task.T2V_A14B:
        return noise, None, None, scalar_timestep(device)
    if task == Task.I2V_A14B:
        img: I2VImage = plan.image
        clip = i2v_vae_input(img, plan.frame_num).to(device)
        latent_img = comp.vae_encode(clip[None])[0].float()
        y = torch.concat([i2v_mask(plan.frame_num, lat_h, lat_w).to(device), latent_img])
        return noise, y, None, scalar_timestep(device)
    # TI2V-5B
    if plan.image is None:
        def t_text(t: int) -> Tensor:
            return token_timesteps(t, lat_f, lat_h, lat_w, plan.seq_len).to(device)
        return noise, None, None, t_text
    z = comp.vae_encode(plan.image.pixels[:, None][None].to(device))[0].float()   # [48, 1, h, w]

    def put_first_frame(latent: Tensor) -> Tensor:
        latent = latent.clone()
        latent[:, :1] = z
        return latent

    def t_image(t: int) -> Tensor:
        return token_timesteps(t, lat_f, lat_h, lat_w, plan.seq_len, first_frame_clean=True).to(device)

    return put_first_frame(noise), None, put_first_frame, t_image


def run_video_task(plan: RunPlan, comp: Components, dist, hooks: RunHooks, *, batch_cfg: bool = True,
                   trace: Trace = None) -> RunOutput:
    """Encode, denoise and (on rank 0) decode one video."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    if dist.agree_stop(hooks.stop_requested()):
        raise Cancelled(0)
    if plan.init_latent is not None and plan.denoise == 0.0:      # decode only
        return _decode(plan, plan.init_latent.to(comp.device), comp, dist, hooks, trace, timings)
    hooks.report(Phase.ENCODE, 0, 1, start, "encoding the prompt")
    scheduler = _scheduler(plan, comp)
    # Guidance 1 on every step (the 4-step LoRA templates): the unconditional branch never runs,
    # so the negative prompt is not encoded either (ComfyUI skips it the same way).
    context, context_null = prompt_contexts(comp.encode_text, plan.prompt, plan.neg_prompt,
                                            plan.context, plan.neg_context,
                                            need_negative=plan.schedule.uses_uncond(scheduler.timesteps))
    if context_null is not None:
        context_null = context_null.to(comp.device, torch.float32)
    context = context.to(comp.device, torch.float32)
    if trace is not None:
        trace("context", context.detach().cpu())
        if context_null is not None:
            trace("context_null", context_null.detach().cpu())
    noise = initial_noise(plan.latent_shape, plan.seed, comp.device)
    if plan.init_latent is not None:
        # ComfyUI's flow noise scaling at the first sigma left: sigma * noise + (1 - sigma) * latent.
        sigma = scheduler.sigmas[0].item()
        noise = sigma * noise + (1.0 - sigma) * plan.init_latent.to(comp.device)
    latent, y, post_step, t_input = _task_conditioning(plan, comp, noise, trace)
    timings[Phase.ENCODE] = time.perf_counter() - start
    hooks.report(Phase.ENCODE, 1, 1, start, "prompt encoded")

    t0 = time.perf_counter()
    inputs = DenoiseInputs(latent=latent, context=context, context_null=context_null,
                           seq_len=plan.seq_len, schedule=plan.schedule, timestep_input=t_input,
                           y=y, post_step=post_step)
    latent = denoise(comp.models, scheduler, inputs, dist, hooks, batch_cfg=batch_cfg, trace=trace)
    timings[Phase.DENOISE] = time.perf_counter() - t0

    if dist.agree_stop(hooks.stop_requested()):   # every rank, decode or not: same collective count
        raise Cancelled(plan.steps)
    return _decode(plan, latent, comp, dist, hooks, trace, timings)


def _scheduler(plan: RunPlan, comp: Components):
    """The run's scheduler; with an input latent, the tail of a longer schedule (`denoise`)."""
    if plan.init_latent is None:
        return comp.make_scheduler(plan.solver, plan.steps, plan.shift)
    from .schedulers import denoise_schedule

    total, skip = denoise_schedule(plan.steps, plan.denoise)
    return comp.make_scheduler(plan.solver, total, plan.shift).start_at(skip)


def _decode(plan: RunPlan, latent: Tensor, comp: Components, dist, hooks: RunHooks, trace: Trace,
            timings: dict) -> RunOutput:
    """Decode when the plan asks for it: rank 0, or every rank when the VAE decode is split
    across them (`comp.decode_all_ranks`); the video is rank 0's."""
    video = None
    if plan.decode and (dist.rank == 0 or comp.decode_all_ranks):
        rank0 = dist.rank == 0
        t0 = time.perf_counter()
        if rank0:
            hooks.report(Phase.DECODE, 0, 1, t0, "decoding the video")
            if trace is not None:
                trace("vae_decode_in", latent.detach().float().cpu())
        with torch.no_grad():
            video = comp.vae_decode(latent[None].float())
        video = video[0] if rank0 and video is not None else None
        if rank0:
            if trace is not None:
                trace("video", video.detach().float().cpu())
            timings[Phase.DECODE] = time.perf_counter() - t0
            hooks.report(Phase.DECODE, 1, 1, t0, "video decoded")
    return RunOutput(latent=latent, video=video, timings=timings)


class VideoPipeline:
    """The T2V-A14B / I2V-A14B / TI2V-5B family (see `pipeline.families` for the contract)."""

    s2v_dit = False
    split_decode = True   # the final decode may be split in row bands over the ranks

    def __init__(self, task_spec: TaskSpec) -> None:
        self.task_spec = task_spec
        self.load_timings: dict[str, float] = {}

    @classmethod
    def load(cls, task_spec: TaskSpec, parts, device) -> "VideoPipeline":
        return cls(task_spec)   # nothing beyond the engine's T5, VAE and DiT(s)

    def plan(self, request: GenerateRequest, ulysses_size: int = 1) -> RunPlan:
        return resolve_request(self.task_spec, request, ulysses_size)

    def run(self, plan: RunPlan, comp: Components, dist, hooks: RunHooks, *, batch_cfg: bool = True,
            trace: Trace = None) -> Optional[GenerateResult]:
        out = run_video_task(plan, comp, dist, hooks, batch_cfg=batch_cfg, trace=trace)
        if dist.rank != 0:
            return None
        video = video_to_uint8(out.video) if out.video is not None else None
        return GenerateResult(latent=out.latent.detach().float().cpu(), video=video,
                              fps=self.task_spec.fps, seed=plan.seed, timings=dict(out.timings),
                              warnings=tuple(plan.warnings))
