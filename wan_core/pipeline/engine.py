"""`WanEngine`: the models of one task loaded once, and `generate()` for one video at a time.

It runs in one process (the CLI's single-GPU path, the tests) or on every rank of a worker group
(`runtime.worker` builds it with that rank's `DistContext`). On a group every rank calls
`generate` with the same request; rank 0 returns the `GenerateResult`, the others None.

Loading (docs/wan22_reference.md §1.4, §5.4): T5 (on the CPU with `t5_cpu`), the task's VAE in
float32, and the DiT(s) in `param_dtype`, straight to their device. With `offload='experts'` the
MoE expert that is not running waits on the CPU; parallel strategies are applied once, here, by
`pipeline.parallelize` when the group has more than one rank.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import (EngineSpec, GenerateRequest, GenerateResult, OffloadMode, ParamDtype, Task,
                      TASKS)
from ..errors import CheckpointError, ConfigError
from .experts import Expert
from .progress import Phase, Progress, RunHooks
from .video_tasks import VIDEO_TASKS, Components, RunPlan, resolve_request, run_video_task

log = logging.getLogger("wan_core.engine")

__all__ = ["WanEngine", "RunHooks", "Progress", "Phase"]


def _dist_single(device):
    from ..distributed.context import DistContext

    return DistContext.single(device)


def check_checkpoint(ckpt_dir, task: Task) -> None:
    """Check that `ckpt_dir` holds every file the task loads, without reading any weight.

    Opens each DiT shard's safetensors header (a truncated shard fails here, by name) and checks the
    T5 checkpoint, the tokenizer and the VAE file exist. Raises CheckpointError / ConfigError."""
    from ..loading.checkpoint import TensorSource
    from ..loading.detect import detect_task, dit_folders, read_config
    from .text import T5_CHECKPOINT, TOKENIZER_SUBDIR

    ckpt = Path(ckpt_dir)
    task = Task.parse(task)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint folder {str(ckpt)!r} does not exist (--ckpt_dir); download "
                              f"the official Wan2.2 {task.value} checkpoint there")
    found = detect_task(ckpt)
    if found != task:
        raise ConfigError(f"{ckpt} holds a {found.value} checkpoint, not {task.value}; pass "
                          f"--task {found.value} or the {task.value} folder")
    for folder in dit_folders(ckpt, task).values():
        read_config(folder)
        TensorSource.from_folder(folder).close()
    spec = TASKS[task]
    for rel in (T5_CHECKPOINT, str(TOKENIZER_SUBDIR / "tokenizer.json"), spec.vae_file):
        if not (ckpt / rel).is_file():
            raise CheckpointError(f"{ckpt / rel} is missing; the {task.value} checkpoint folder needs "
                                  f"{rel} (from the official Wan2.2 download)")


class ExpertSet:
    """The DiT(s) of a task by expert; `get(expert)` makes the asked one resident.

    With `offload_experts` the inactive expert is moved to the CPU before the active one is moved
    to the device, so one expert's worth of device memory suffices (the official single-GPU
    behaviour, `init_on_cpu`)."""

    def __init__(self, models: dict[Expert, torch.nn.Module], device: torch.device,
                 offload_experts: bool = False) -> None:
        self.models = models
        self.device = device
        self.offload_experts = offload_experts and len(models) > 1
        self.active: Optional[Expert] = None

    def get(self, expert: Expert) -> torch.nn.Module:
        model = self.models[expert]
        if self.offload_experts and self.active != expert:
            for other, m in self.models.items():
                if other != expert:
                    m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            model.to(self.device)
            self.active = expert
        return model

    def all(self):
        return list(self.models.values())


class WanEngine:
    """Loads the models of `spec.task` once; `generate(request, hooks)` makes one video."""

    def __init__(self, spec: EngineSpec, dist=None, on_progress: Optional[Callable[[Progress], None]] = None,
                 *, text_len: Optional[int] = None) -> None:
        self.spec = spec
        self.task = Task.parse(spec.task)
        if self.task not in VIDEO_TASKS:
            raise ConfigError(f"WanEngine runs {', '.join(t.value for t in VIDEO_TASKS)}; "
                              f"{self.task.value} needs the S2V engine")
        self.task_spec = TASKS[self.task]
        self.device = torch.device(dist.device if dist is not None else spec.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available "
                              "(use --device cpu, or install a CUDA build of torch)")
        self.dist = dist if dist is not None else _dist_single(self.device)
        self.batch_cfg = True
        """Run the conditional and unconditional branches as one batch of 2 (off: two calls)."""
        hooks = RunHooks(on_progress=on_progress)
        start = time.perf_counter()
        self.load_timings: dict[str, float] = {}

        ckpt = Path(spec.ckpt_dir)
        check_checkpoint(ckpt, self.task)
        from ..loading.detect import dit_folders, read_config

        folders = dit_folders(ckpt, self.task)
        dit_cfg = read_config(next(iter(folders.values())))
        spec.parallel.validate(int(dit_cfg.get("num_heads", self.task_spec.num_heads)))
        self.text_len = int(text_len or dit_cfg.get("text_len", 512))
        dtype = ParamDtype(spec.param_dtype).torch_dtype
        offload = OffloadMode(spec.parallel.offload)

        hooks.report(Phase.LOAD, 0, 3, start, "loading the text encoder")
        t0 = time.perf_counter()
        from .text import TextEncoder

        self.t5_device = torch.device("cpu") if (spec.parallel.t5_cpu or offload != OffloadMode.NONE) \
            else self.device
        self.t5_offload = offload != OffloadMode.NONE and not spec.parallel.t5_cpu and self.device.type != "cpu"
        self.text_encoder = TextEncoder(ckpt, text_len=self.text_len, device=self.t5_device, dtype=dtype)
        self.load_timings["t5"] = time.perf_counter() - t0

        hooks.report(Phase.LOAD, 1, 3, start, "loading the VAE")
        t0 = time.perf_counter()
        self.vae = self._load_vae(ckpt)
        self.load_timings["vae"] = time.perf_counter() - t0

        hooks.report(Phase.LOAD, 2, 3, start, "loading the diffusion model")
        t0 = time.perf_counter()
        from ..loading.checkpoint import load_dit
        from ..models.attention import resolve_backend

        kernel = resolve_backend(getattr(spec.attention, "value", spec.attention), self.device)
        self.attention = kernel.name
        offload_experts = offload == OffloadMode.EXPERTS and self.task_spec.moe
        models: dict[Expert, torch.nn.Module] = {}
        for name, folder in folders.items():
            expert = Expert(name)
            first = not models
            where = self.device if (not offload_experts or first) else torch.device("cpu")
            models[expert] = load_dit(folder, dtype=dtype, device=where, kernel=kernel)
        self.models = ExpertSet(models, self.device, offload_experts=offload_experts)
        if offload_experts:
            self.models.active = next(iter(models))
        self._parallelize()
        self.load_timings["dit"] = time.perf_counter() - t0
        self.load_timings["total"] = time.perf_counter() - start
        hooks.report(Phase.LOAD, 3, 3, start, "models loaded")

    # -- loading helpers ----------------------------------------------------------------------

    def _load_vae(self, ckpt: Path):
        from ..loading.vae import load_vae

        return load_vae(ckpt / self.task_spec.vae_file, self.task_spec.vae, device=self.device,
                        dtype=torch.float32)

    def _parallelize(self) -> None:
        """Apply the parallel strategies of spec.parallel (Ulysses, FSDP2, block offload)."""
        par = self.spec.parallel
        needs = (self.dist.world_size > 1 or OffloadMode(par.offload) == OffloadMode.BLOCKS)
        if not needs:
            return
        from . import parallelize as par_mod

        for expert, model in self.models.models.items():
            self.models.models[expert] = par_mod.parallelize_dit(model, par, self.dist)

    # -- running ------------------------------------------------------------------------------

    def _encode_text(self, prompts: list[str]) -> list[torch.Tensor]:
        if self.t5_offload:
            self.text_encoder.to(self.device)
            try:
                return self.text_encoder.encode(prompts)
            finally:
                self.text_encoder.to("cpu")
                torch.cuda.empty_cache()
        return self.text_encoder.encode(prompts)

    def components(self) -> Components:
        from .schedulers import make_scheduler

        return Components(encode_text=self._encode_text, vae_encode=self.vae.encode,
                          vae_decode=self.vae.decode, models=self.models, device=self.device,
                          make_scheduler=make_scheduler)

    def plan(self, request: GenerateRequest) -> RunPlan:
        """Validate and resolve `request` (no model work); agreed across ranks for random seeds."""
        plan = resolve_request(self.task_spec, request, sp_size=self.dist.ulysses_size)
        if request.seed is not None and request.seed < 0 and self.dist.world_size > 1:
            from dataclasses import replace

            plan = replace(plan, seed=self.dist.broadcast_object(plan.seed))
        return plan

    def generate(self, request: GenerateRequest, hooks: Optional[RunHooks] = None, *,
                 trace: Optional[Callable[[str, torch.Tensor], None]] = None) -> Optional[GenerateResult]:
        """Make one video. Rank 0 returns the result (latent fp32 CPU, video uint8 [F,H,W,3] CPU);
        other ranks return None. Raises `Cancelled(step)` when `hooks.should_stop()` turned true.

        `trace(name, tensor)`, when given, receives the intermediate tensors under the names of the
        parity goldens (`context`, `call00_x_in`, `callNN_<expert>_out`, `vae_decode_in`, `video`)."""
        from ..io.video import video_to_uint8

        hooks = hooks or RunHooks()
        plan = self.plan(request)
        for text in plan.warnings:
            log.warning(text)
        out = run_video_task(plan, self.components(), self.dist, hooks, batch_cfg=self.batch_cfg,
                             trace=trace)
        if self.dist.rank != 0:
            return None
        video = video_to_uint8(out.video) if out.video is not None else None
        return GenerateResult(latent=out.latent.detach().float().cpu(), video=video,
                              fps=self.task_spec.fps, seed=plan.seed, timings=dict(out.timings))

    def close(self) -> None:
        """Drop the models (frees device memory once nothing else references them)."""
        self.models = None
        self.text_encoder = None
        self.vae = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
