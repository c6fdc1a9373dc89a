"""ComfyUI's `uni_pc` / `uni_pc_bh2` samplers on its `simple` schedule, as a step-by-step scheduler.

Not the official flow UniPC (`schedulers.FlowUniPCScheduler`): ComfyUI runs the UniPC of
comfy/extra_samplers/uni_pc.py in a variance-exploding parametrisation on the flow model's x0
prediction (docs/samplers.md lists the five differences). This module reproduces what ComfyUI's
KSampler does for `uni_pc` + `simple` + ModelSamplingSD3(shift), so the TI2V-5B template (20 steps,
cfg 5, shift 8) can be matched:

- sigmas: `simple` for steps + 1, the penultimate dropped (DISCARD_PENULTIMATE_SIGMA_SAMPLERS); the
  sampler clamps the last one to 0.001 *in place*, so KSampler's final `inverse_noise_scaling`
  divides by (1 - 0.001);
- the state is x_vp = x / sqrt(1 + sigma^2); the model sees x_vp * sqrt(sigma^2 + 1) and its x0
  prediction goes through `predict_eps_sigma` and `data_prediction_fn` (alpha = 1/sqrt(1+sigma^2));
- multistep UniPC of order min(3, len(sigmas) - 2), lower order for the first and last steps, the
  corrector on every step but the last, B(h) = h (bh1) or e^h - 1 (bh2).
Each `step(v)` receives the model output at the sample it returned before (the predictor's point):
it corrects that point with it (UniC), then predicts the next one (UniP); the arithmetic is
ComfyUI's, in float32, in its order.
"""
from __future__ import annotations

from typing import Optional

import torch

from .schedulers import NUM_TRAIN_TIMESTEPS, FlowScheduler, TimestepLike, comfy_simple_sigmas

SIGMA_FLOOR = 0.001     # sample_unipc: the last sigma (0) is replaced by 0.001


def _log_mean(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((s * s) + 1))


def _alpha(s):
    return torch.exp(_log_mean(s))


def _std(s):
    return torch.sqrt(1. - torch.exp(2. * _log_mean(s)))


def _lambda(s):
    lm = _log_mean(s)
    return lm - 0.5 * torch.log(1. - torch.exp(2. * lm))


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


class ComfyUniPCScheduler(FlowScheduler):
    def __init__(self, steps: int, shift: float, variant: str = "bh1") -> None:
        s = comfy_simple_sigmas(steps + 1, shift)
        self.sigmas = torch.cat([s[:-2], s[-1:]])                  # [steps + 1], ends with 0
        self.t = self.sigmas.clone()
        self.t[-1] = SIGMA_FLOOR
        self.timesteps = self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS     # ComfyUI: model_sampling.timestep
        self.step_index = 0
        self._x0_history = []
        self.variant = variant
        self.n = len(self.t) - 1
        self.order = min(3, len(self.t) - 2)
        self._models: list[torch.Tensor] = []     # model_prev_list
        self._ts: list[torch.Tensor] = []         # t_prev_list ([1] tensors)
        self._anchor: Optional[torch.Tensor] = None   # x_vp at the last corrected point
        self._returned: Optional[torch.Tensor] = None  # what we gave the model last (its VE form)
        self._pred_vp: Optional[torch.Tensor] = None   # ... and its x_vp

    def start_at(self, skip: int) -> "ComfyUniPCScheduler":
        """Partial denoising (`denoise_schedule`): ComfyUI's uni_pc on the tail of the sigmas, so
        the solver's own tables (floored t, order) are rebuilt from the tail."""
        super().start_at(skip)
        self.t = self.sigmas.clone()
        self.t[-1] = SIGMA_FLOOR
        self.n = len(self.t) - 1
        self.order = min(3, len(self.t) - 2)
        return self

    # -- ComfyUI's pieces ----------------------------------------------------------------------

    def _vec(self, i: int) -> torch.Tensor:
        return self.t[i].expand(1)

    def _x0(self, v: torch.Tensor, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """model_fn(x_vp, t) of ComfyUI for a flow model whose velocity at the model input is v."""
        dims = x_vp.dim()
        sigma = t.view(t.shape[:1] + (1,) * (dims - 1))
        x_in = x_vp * ((sigma ** 2 + 1.0) ** 0.5)            # predict_eps_sigma's input
        denoised = x_in - v * sigma                           # CONST.calculate_denoised
        eps = (x_in - denoised) / sigma
        return (x_vp - _expand(_std(t), dims) * eps) / _expand(_alpha(t), dims)

    def _step_order(self, k: int) -> int:
        return k if k < self.order else min(self.order, self.n + 1 - k)

    def _coeffs(self, order: int, t: torch.Tensor):
        ms, ts = self._models, self._ts
        t_prev_0 = ts[-1]
        lambda_prev_0, lambda_t = _lambda(t_prev_0), _lambda(t)
        m0 = ms[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_mean(t))
        h = lambda_t - lambda_prev_0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((_lambda(ts[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((ms[-(i + 1)] - m0) / rk)
        rks.append(1.)
        rks = torch.tensor(rks)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        r_rows, b = [], []
        for i in range(1, order + 1):
            r_rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= (i + 1)
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        R = torch.stack(r_rows)
        b = torch.tensor(b)
        d1s = torch.stack(d1s, dim=1) if d1s else None
        return m0, sigma_prev_0, sigma_t, alpha_t, h_phi_1, b_h, R, b, d1s

    def _base(self, x, order, t):
        m0, s_prev, s_t, a_t, h_phi_1, b_h, R, b, d1s = self._coeffs(order, t)
        dims = x.dim()
        x_t_ = _expand(s_t / s_prev, dims) * x - _expand(a_t * h_phi_1, dims) * m0
        return x_t_, m0, a_t, b_h, R, b, d1s, dims

    def _predict(self, x: torch.Tensor, order: int, t: torch.Tensor) -> torch.Tensor:
        x_t_, m0, a_t, b_h, R, b, d1s, dims = self._base(x, order, t)
        if d1s is None:
            return x_t_ - _expand(a_t * b_h, dims) * 0
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(d1s, rhos_p, dims=([1], [0]))
        return x_t_ - _expand(a_t * b_h, dims) * pred_res

    def _correct(self, x: torch.Tensor, order: int, t: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        x_t_, m0, a_t, b_h, R, b, d1s, dims = self._base(x, order, t)
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
        corr_res = torch.tensordot(d1s, rhos_c[:-1], dims=([1], [0])) if d1s is not None else 0
        d1_t = model_t - m0
        return x_t_ - _expand(a_t * b_h, dims) * (corr_res + rhos_c[-1] * d1_t)

    def _remember_model(self, m: torch.Tensor, t: torch.Tensor) -> None:
        self._models = (self._models + [m])[-self.order:]
        self._ts = (self._ts + [t])[-self.order:]

    # -- the scheduler interface ---------------------------------------------------------------

    def _to_model_input(self, x_vp: torch.Tensor, i: int) -> torch.Tensor:
        sigma = self._vec(i).view((1,) + (1,) * (x_vp.dim() - 1))
        return x_vp * ((sigma ** 2 + 1.0) ** 0.5)

    def step(self, model_output: torch.Tensor, timestep: TimestepLike,
             sample: torch.Tensor) -> torch.Tensor:
        self._begin_step(timestep)
        i = self.step_index
        out_dtype = sample.dtype
        v = model_output.float()
        if i == 0:
            x_vp = sample.float() / torch.sqrt(1.0 + self.t[0] ** 2.0)
            m = self._x0(v, x_vp, self._vec(0))
            self._anchor = x_vp
        else:
            x_vp = self._pred_vp if sample is self._returned else sample.float() / (
                (self.t[i] ** 2 + 1.0) ** 0.5)
            m = self._x0(v, x_vp, self._vec(i))
            self._anchor = self._correct(self._anchor, self._step_order(i), self._vec(i), m)
        self._remember_model(m, self._vec(i))
        self.step_index += 1
        k = i + 1
        nxt = self._predict(self._anchor, self._step_order(k), self._vec(k))
        if k == self.n:      # last: no corrector; back to ComfyUI's LATENT scale
            final = nxt / _alpha(self.t[-1])
            return (final / (1.0 - self.t[-1])).to(out_dtype)
        self._pred_vp = nxt
        self._returned = self._to_model_input(nxt, k).to(out_dtype)
        return self._returned


__all__ = ["ComfyUniPCScheduler"]
