"""Flow-matching samplers of Wan2.2: UniPC (default `unipc`), DPM-Solver++ (`dpm++`), and ComfyUI's
`euler` on its `simple` schedule (`euler`, what the 4-step LoRA templates run).

Written from the official `wan/utils/fm_solvers*.py`. Conventions (flow matching, velocity prediction):
`x_σ = (1 − σ)·x0 + σ·ε`, the model predicts `v ≈ ε − x0`, so `x0 = x − σ·v`; the timestep given to
the model is `int64(σ·1000)` (truncated). In log-SNR form `α = 1 − σ`, `λ = log α − log σ`.

Both solvers are order-2 multistep methods in data-prediction (x0) form:
- UniPC (bh2, `B(h) = expm1(−h)`): predictor of order min(2, steps done, steps left) followed, from
  the second step on, by the UniC corrector that refines the previous update with the new model
  output. Sigmas start at 0.999 (the training schedule's largest), so the first timestep is 999.
- DPM-Solver++ (midpoint): first and last step first-order, the others second-order. Sigmas come
  from `get_sampling_sigmas`: `linspace(1, 0, n+1)[:n]`, shifted, so the first timestep is 1000.
Both end at σ = 0, where the update returns the x0 prediction.

Euler (ComfyUI, comfy/k_diffusion/sampling.py `sample_euler` with `ModelSamplingSD3(shift)` and the
`simple` scheduler of comfy/samplers.py): sigmas come from ComfyUI's 1000-entry table, the model gets
the float timestep `σ·1000` (no int64 truncation), and each step is `x += (x − x0)/σ · (σ' − σ)`,
written with ComfyUI's float32 operations so the trajectory matches its graph to rounding.
ComfyUI's `uni_pc` is a different method, not this UniPC: see docs/samplers.md.

Scalar coefficients are computed as float32 tensors, the same way as the official schedulers
(which run on CPU float32 scalars), so trajectories match the reference to float32 rounding.
Multistep history lives in the instance: make one scheduler per generation (or per S2V clip).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from ..config import Solver
from ..errors import ConfigError

NUM_TRAIN_TIMESTEPS = 1000
ORDER = 2

TimestepLike = Union[int, float, torch.Tensor]


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """σ' = s·σ / (1 + (s − 1)·σ): spends more steps at high noise for s > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def get_sampling_sigmas(steps: int, shift: float) -> np.ndarray:
    """The official `get_sampling_sigmas`: shifted `linspace(1, 0, steps+1)[:steps]` (float64)."""
    return shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)


def comfy_flow_sigma_table(shift: float, multiplier: int = 1000, timesteps: int = 1000) -> torch.Tensor:
    """The `sigmas` buffer of ComfyUI's ModelSamplingDiscreteFlow after `set_parameters(shift,
    multiplier)` (what ModelSamplingSD3 sets): float32 `time_snr_shift(shift, t)` for t = i/1000,
    i = 1..1000, with ComfyUI's exact order of float32 operations."""
    t = (torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier
    t = t / multiplier
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def comfy_simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """ComfyUI's `simple` schedule (comfy/samplers.py `simple_scheduler`) on that table: every
    (1000/steps)-th entry from the top, then 0. float32 `[steps + 1]`, e.g. shift 5, 4 steps:
    [1.0, 0.9375, 0.8333333, 0.625, 0.0]."""
    table = comfy_flow_sigma_table(shift)
    stride = len(table) / steps
    picked = [float(table[-(1 + int(x * stride))]) for x in range(steps)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def _train_sigma_max() -> float:
    # Largest sigma of the 1000-step training schedule, 1 − 1/1000, as the official code has it:
    # computed in float64 and stored in a float32 tensor. Its float32 value (0.99900001...) makes
    # the first timestep 999 (0.999 in float64 would truncate to 998).
    alphas = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1]
    return float(torch.tensor(1.0 - alphas[0], dtype=torch.float32))


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1 - sigma, sigma


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR; +inf at σ = 0 and −inf at σ = 1 (both handled by the updates)."""
    alpha, sigma = _alpha_sigma(sigma)
    return torch.log(alpha) - torch.log(sigma)


class FlowScheduler:
    """Common part: the schedule tables, step bookkeeping and the x0 conversion.

    `timesteps`: int64 `[steps]`, the values to give the model. `sigmas`: float32 `[steps + 1]`,
    ending with 0 (kept on the CPU). `step(model_output, timestep, sample)` returns the next
    sample in `sample`'s dtype; it must be called once per timestep, in order.
    """

    def __init__(self, sigmas: np.ndarray) -> None:
        """`sigmas`: float64 noise levels of the steps (without the final 0)."""
        self.timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.step_index = 0
        self._x0_history: list[torch.Tensor] = []   # converted outputs, newest last, at most ORDER

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def start_at(self, skip: int) -> "FlowScheduler":
        """Drop the first `skip` steps before any step is taken (partial denoising: the run
        starts from a given latent at `sigmas[0]`, see `denoise_schedule`). Multistep history
        starts empty there, as ComfyUI's samplers start on the tail of their sigmas."""
        if self.step_index or self._x0_history:
            raise RuntimeError("start_at() must come before the first step")
        if not 0 <= skip < self.num_steps:
            raise ValueError(f"cannot skip {skip} of {self.num_steps} steps")
        self.timesteps = self.timesteps[skip:]
        self.sigmas = self.sigmas[skip:]
        return self

    def _begin_step(self, timestep: TimestepLike) -> None:
        i = self.step_index
        if i >= self.num_steps:
            raise RuntimeError(f"scheduler already took all {self.num_steps} steps; "
                               "make a new scheduler for each generation")
        expected = self.timesteps[i].item()
        got = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if got != float(expected):
            raise ValueError(f"step {i} expects timestep {expected}, got {got:g}; steps must follow "
                             "scheduler.timesteps in order")

    def _to_x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample - self.sigmas[self.step_index] * model_output

    def _remember(self, x0: torch.Tensor) -> None:
        self._x0_history = (self._x0_history + [x0])[-ORDER:]

    def step(self, model_output: torch.Tensor, timestep: TimestepLike,
             sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FlowUniPCScheduler(FlowScheduler):
    """UniPC multistep (bh2, x0 prediction, order 2, lower order at the end, UniC corrector)."""

    def __init__(self, steps: int, shift: float) -> None:
        sigmas = np.linspace(_train_sigma_max(), 0.0, steps + 1)[:-1]
        super().__init__(shift_sigmas(sigmas, shift))
        self._prev_sample: Optional[torch.Tensor] = None   # input of the last predictor
        self._prev_order = 0                                # order of the last predictor

    def _coefficients(self, sigma_next: torch.Tensor, sigma_cur: torch.Tensor,
                      sigma_prev: Optional[torch.Tensor]):
        """Shared by predictor and corrector, from σ of the target, of the current anchor and of
        the anchor before it (None for order 1). Returns (h_phi_1, B_h, rk, b) with b the bh2
        right-hand side [b1, b2] (b2 only when sigma_prev is given)."""
        lam_cur = _lambda(sigma_cur)
        h = _lambda(sigma_next) - lam_cur
        hh = -h                                   # x0-prediction form integrates in −h
        h_phi_1 = torch.expm1(hh)                 # e^{hh} − 1
        b_h = torch.expm1(hh)                     # bh2
        h_phi_k = h_phi_1 / hh - 1
        b = [h_phi_k / b_h]
        rk = None
        if sigma_prev is not None:
            rk = (_lambda(sigma_prev) - lam_cur) / h
            h_phi_k = h_phi_k / hh - 1 / 2
            b.append(h_phi_k * 2 / b_h)
        return h_phi_1, b_h, rk, b

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: x at σ[i] -> estimate at σ[i+1] from the last `order` x0 predictions."""
        i = self.step_index
        m0 = self._x0_history[-1]
        sigma_next, sigma_cur = self.sigmas[i + 1], self.sigmas[i]
        alpha_next = 1 - sigma_next
        h_phi_1, b_h, rk, _ = self._coefficients(sigma_next, sigma_cur,
                                                 self.sigmas[i - 1] if order == 2 else None)
        x_new = sigma_next / sigma_cur * x - alpha_next * h_phi_1 * m0
        if order == 2:
            d1 = (self._x0_history[-2] - m0) / rk
            x_new = x_new - alpha_next * b_h * (0.5 * d1)   # rho_p = 1/2 for order 2
        return x_new

    def _correct(self, x0_new: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC: redo the last update (from `_prev_sample` at σ[i−1] to σ[i]) with x0_new."""
        i, order = self.step_index, self._prev_order
        m0 = self._x0_history[-1]
        sigma_cur, sigma_prev = self.sigmas[i], self.sigmas[i - 1]
        alpha_cur = 1 - sigma_cur
        h_phi_1, b_h, rk, b = self._coefficients(sigma_cur, sigma_prev,
                                                 self.sigmas[i - 2] if order == 2 else None)
        x = sigma_cur / sigma_prev * self._prev_sample - alpha_cur * h_phi_1 * m0
        if order == 1:
            rhos = torch.tensor([0.5], dtype=torch.float32)
            corr = 0
        else:
            # Solve R·rho = b with R rows r^0, r^1 for r = [rk, 1] (the last column is the new output).
            r = torch.stack([rk, torch.ones((), dtype=rk.dtype)])
            rhos = torch.linalg.solve(torch.stack([torch.ones_like(r), r]), torch.stack(b))
            corr = rhos[0] * ((self._x0_history[-2] - m0) / rk)
        return x - alpha_cur * b_h * (corr + rhos[-1] * (x0_new - m0))

    def step(self, model_output: torch.Tensor, timestep: TimestepLike,
             sample: torch.Tensor) -> torch.Tensor:
        self._begin_step(timestep)
        out_dtype = sample.dtype
        sample = sample.float()
        x0 = self._to_x0(model_output.float(), sample)
        if self._prev_sample is not None:
            sample = self._correct(x0, sample)
        self._remember(x0)
        steps_left = self.num_steps - self.step_index
        order = min(ORDER, steps_left, len(self._x0_history))
        self._prev_sample, self._prev_order = sample, order
        new = self._predict(sample, order)
        self.step_index += 1
        return new.to(out_dtype)


class FlowDPMppScheduler(FlowScheduler):
    """DPM-Solver++ multistep, midpoint, order 2; first and last step first-order, no noise."""

    def __init__(self, steps: int, shift: float) -> None:
        super().__init__(get_sampling_sigmas(steps, shift))

    def step(self, model_output: torch.Tensor, timestep: TimestepLike,
             sample: torch.Tensor) -> torch.Tensor:
        self._begin_step(timestep)
        i = self.step_index
        out_dtype = sample.dtype
        sample = sample.float()
        x0 = self._to_x0(model_output.float(), sample)
        self._remember(x0)
        sigma_next, sigma_cur = self.sigmas[i + 1], self.sigmas[i]
        alpha_next = 1 - sigma_next
        lam_cur = _lambda(sigma_cur)
        h = _lambda(sigma_next) - lam_cur
        phi = alpha_next * (torch.exp(-h) - 1.0)
        new = (sigma_next / sigma_cur) * sample - phi * x0
        first_order = i == 0 or i == self.num_steps - 1
        if not first_order:
            r0 = (lam_cur - _lambda(self.sigmas[i - 1])) / h
            d1 = (1.0 / r0) * (x0 - self._x0_history[-2])
            new = new - 0.5 * phi * d1
        self.step_index += 1
        return new.to(out_dtype)


class FlowEulerScheduler(FlowScheduler):
    """ComfyUI `euler` (no churn) on ComfyUI's `simple` schedule of ModelSamplingSD3(shift).

    `timesteps` are float32 `σ·1000` (ComfyUI's `model_sampling.timestep`), not truncated."""

    def __init__(self, steps: int, shift: float) -> None:
        self.sigmas = comfy_simple_sigmas(steps, shift)
        self.timesteps = self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS
        self.step_index = 0
        self._x0_history = []

    def step(self, model_output: torch.Tensor, timestep: TimestepLike,
             sample: torch.Tensor) -> torch.Tensor:
        self._begin_step(timestep)
        i = self.step_index
        out_dtype = sample.dtype
        x = sample.float()
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        denoised = x - model_output.float() * sigma          # CONST.calculate_denoised
        d = (x - denoised) / sigma                            # k-diffusion to_d
        x = x + d * (sigma_next - sigma)
        self.step_index += 1
        return x.to(out_dtype)


def denoise_schedule(steps: int, denoise: float) -> tuple[int, int]:
    """ComfyUI's partial-denoise rule (`comfy/samplers.py`, `KSampler.set_steps`): build the
    schedule for `int(steps / denoise)` steps and run only its last `steps`. Returns (schedule
    length, steps to skip); denoise > 0.9999 is a full run. Our schedulers then `start_at(skip)`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sample_steps={steps!r}: need a whole number of steps >= 1")
    if not (0.0 < denoise <= 1.0):
        raise ConfigError(f"denoise={denoise!r}: use a fraction in (0, 1] (1 = from pure noise)")
    if denoise > 0.9999:
        return steps, 0
    total = int(steps / denoise)
    return total, total - steps


def make_scheduler(solver: Union[Solver, str], steps: int, shift: float) -> FlowScheduler:
    """A fresh scheduler for one generation: `unipc` (default), `dpm++` or `euler`."""
    solver = Solver.parse(solver)
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sample_steps={steps!r}: need a whole number of steps >= 1")
    if not (shift > 0) or math.isinf(shift):
        raise ConfigError(f"sample_shift={shift!r}: need a finite value > 0 (official: 3-12)")
    if solver is Solver.UNIPC:
        return FlowUniPCScheduler(steps, float(shift))
    if solver is Solver.EULER:
        return FlowEulerScheduler(steps, float(shift))
    if solver in (Solver.COMFY_UNI_PC, Solver.COMFY_UNI_PC_BH2):
        from .comfy_unipc import ComfyUniPCScheduler

        return ComfyUniPCScheduler(steps, float(shift), "bh1" if solver is Solver.COMFY_UNI_PC else "bh2")
    return FlowDPMppScheduler(steps, float(shift))
