"""The denoise loop shared by T2V, I2V and TI2V.

Per step (official `generate()` of WanT2V / WanI2V / WanTI2V):
1. every rank agrees whether to stop (`dist.agree_stop`), so all ranks leave at the same step;
2. the expert and guidance for the step (`ExpertSchedule`: MoE boundary or `switch_step`);
3. the conditional and unconditional predictions: one batched forward (B=2) on one device, one
   branch per rank with CFG parallelism, or the conditional one only when guidance is 1;
4. `noise = uncond + g * (cond - uncond)`;
5. one scheduler step (the same scheduler instance across the expert switch);
6. `post_step` (TI2V image mode puts the clean first-frame latent back);
7. with `hooks.want_preview`, on rank 0 only: a latent preview for the step's progress report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch

from ..errors import Cancelled
from .experts import Expert, ExpertSchedule
from .preview import LatentPreviewer, x0_middle_frame
from .progress import Phase, RunHooks

Tensor = torch.Tensor


class ModelProvider(Protocol):
    """Gives the DiT for an expert, making it resident first if it was offloaded
    (`pipeline.parallelize.expert_provider`). `prefetch(expert)`, when present, starts making the
    next expert resident while the current one computes."""

    def get(self, expert: Expert) -> torch.nn.Module: ...


@dataclass
class DenoiseInputs:
    """Everything one run's loop needs. Tensors are unbatched and on the compute device."""

    latent: Tensor                      # [C, F, H, W] float32: initial noise (frame 0 replaced for TI2V image mode)
    context: Tensor                     # [L, 4096] prompt
    context_null: Optional[Tensor]      # [L', 4096] negative prompt; None when every guide is 1
    seq_len: int                        # padded token count (multiple of the Ulysses degree)
    schedule: ExpertSchedule
    timestep_input: Callable[[int], Tensor]          # t -> the DiT's t: [1] int64 or [1, seq_len] float32
    y: Optional[Tensor] = None          # [Cy, F, H, W] I2V conditioning (mask + image latent)
    post_step: Optional[Callable[[Tensor], Tensor]] = None   # applied after every scheduler step


def scalar_timestep(device) -> Callable[[float], Tensor]:
    """The [1] timestep of T2V / I2V: int64 for the official solvers (`torch.stack([t])`), float32
    for `euler` (ComfyUI gives the model `sigma * 1000` untruncated)."""
    def make(t) -> Tensor:
        if isinstance(t, float):
            return torch.tensor([t], dtype=torch.float32, device=device)
        return torch.tensor([int(t)], dtype=torch.int64, device=device)
    return make


def _cfg_exchange(dist, out: Tensor) -> tuple[Tensor, Tensor]:
    """CFG parallelism: each rank of the cfg pair computed one branch; return (cond, uncond) on all."""
    from ..distributed import cfg_parallel   # imported lazily: only multi-rank runs need it

    return cfg_parallel.exchange(dist, out)


class Guidance:
    """Computes the guided noise prediction of one step for the current expert."""

    def __init__(self, inputs: DenoiseInputs, dist, batch_cfg: bool = True,
                 trace: Optional[Callable[[str, Tensor], None]] = None) -> None:
        self.inp = inputs
        self.dist = dist
        self.batch_cfg = batch_cfg
        self.trace = trace
        self.calls = 0      # DiT branch calls so far, numbered like the goldens (cond 2s, uncond 2s+1)

    def _forward(self, model, x: Tensor, t_in: Tensor, contexts: list[Tensor]) -> Tensor:
        b = len(contexts)
        y = self.inp.y
        return model(x[None].expand(b, *x.shape), t_in.expand(b, *t_in.shape[1:]), contexts,
                     self.inp.seq_len, y=None if y is None else y[None].expand(b, *y.shape))

    def _record(self, expert: Expert, t_in: Tensor, *outs: Tensor) -> None:
        if self.trace is None:
            for _ in outs:
                self.calls += 1
            return
        for out in outs:
            name = f"call{self.calls:02d}_{expert.value}"
            self.trace(f"{name}_t", t_in.detach().cpu())
            self.trace(f"{name}_out", out.detach().float().cpu())
            self.calls += 1

    def __call__(self, model, expert: Expert, x: Tensor, t_in: Tensor, guide: float) -> Tensor:
        ctx, ctx_null = self.inp.context, self.inp.context_null
        cfg_size = getattr(self.dist, "cfg_size", 1)
        if cfg_size > 1:
            mine = ctx if self.dist.cfg_rank == 0 else ctx_null
            out = self._forward(model, x, t_in, [mine])[0]
            cond, uncond = _cfg_exchange(self.dist, out)
        elif guide == 1.0:
            # uncond + 1 * (cond - uncond) == cond: skip the unconditional branch.
            cond = self._forward(model, x, t_in, [ctx])[0]
            self._record(expert, t_in, cond)
            return cond
        elif self.batch_cfg:
            cond, uncond = self._forward(model, x, t_in, [ctx, ctx_null]).unbind(0)
        else:
            cond = self._forward(model, x, t_in, [ctx])[0]
            uncond = self._forward(model, x, t_in, [ctx_null])[0]
        self._record(expert, t_in, cond, uncond)
        return uncond + guide * (cond - uncond)


def denoise(models: ModelProvider, scheduler, inputs: DenoiseInputs, dist, hooks: RunHooks,
            batch_cfg: bool = True, trace: Optional[Callable[[str, Tensor], None]] = None) -> Tensor:
    """Run every scheduler step and return the final latent [C, F, H, W] (float32)."""
    guidance = Guidance(inputs, dist, batch_cfg=batch_cfg, trace=trace)
    latent = inputs.latent
    if trace is not None:
        trace("call00_x_in", latent.detach().float().cpu())
    timesteps = [t.item() for t in scheduler.timesteps]     # int (official) or float (euler)
    experts = [inputs.schedule.expert_at(i, t) for i, t in enumerate(timesteps)]
    prefetch = getattr(models, "prefetch", None)
    total = len(timesteps)
    start = time.perf_counter()
    hooks.report(Phase.DENOISE, 0, total, start, f"{total} steps")
    # Previews: rank 0 only, and only reading tensors the step made anyway (the result is the same).
    previewer = (LatentPreviewer.for_latent(latent)
                 if hooks.want_preview and getattr(dist, "rank", 0) == 0 else None)
    with torch.no_grad():
        for step, t in enumerate(timesteps):
            if dist.agree_stop(hooks.stop_requested()):
                raise Cancelled(step)
            expert = experts[step]
            guide = inputs.schedule.guide_at(step, t)
            model = models.get(expert)
            if prefetch is not None and step + 1 < total and experts[step + 1] != expert:
                prefetch(experts[step + 1])   # the copy overlaps this step's compute
            noise_pred = guidance(model, expert, latent, inputs.timestep_input(t), guide)
            # The model's own x0 estimate (x_t - sigma * v at this step's sigma), not the latent
            # after the step: that one is still noisy until the last steps.
            preview = (previewer(x0_middle_frame(latent, noise_pred, scheduler.sigmas[step]))
                       if previewer is not None else None)
            latent = scheduler.step(noise_pred[None], scheduler.timesteps[step], latent[None])[0]
            if inputs.post_step is not None:
                latent = inputs.post_step(latent)
            hooks.report(Phase.DENOISE, step + 1, total, start, f"step {step + 1}/{total} ({expert.value})",
                         preview=preview)
    return latent
