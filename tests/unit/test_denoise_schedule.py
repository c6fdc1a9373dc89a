"""Partial denoising (`denoise` < 1): ComfyUI's rule on our schedulers.

Oracles: ComfyUI's `KSampler.set_steps` arithmetic (schedule of int(steps / denoise) steps, last
`steps` run), and the straight flow line: with the exact velocity v = noise - x0, a run started at
x = sigma0 * noise + (1 - sigma0) * x0 (sigma0 = the first sigma left after `start_at`) must end on
x0. Tolerance 1e-5: float32 solver coefficients over <= 20 steps on values of order 1; starting the
line at any other sigma misses x0 by > 1e-2. (ComfyUI's uni_pc samplers: see the test for their own offset.)
"""
from __future__ import annotations

import pytest
import torch

from wan_core.config import Solver
from wan_core.errors import ConfigError
from wan_core.pipeline.schedulers import denoise_schedule, make_scheduler


@pytest.mark.parametrize("steps,denoise,expected", [
    (20, 1.0, (20, 0)), (20, 0.99999, (20, 0)), (20, 0.5, (40, 20)), (4, 0.3, (13, 9)),
    (10, 0.75, (13, 3)), (3, 0.9, (3, 0))])
def test_comfyui_rule(steps, denoise, expected):
    assert denoise_schedule(steps, denoise) == expected


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_denoise_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="denoise"):
        denoise_schedule(10, bad)


def _run_from(x0, noise, solver, steps, shift, denoise, sigma_from=None):
    total, skip = denoise_schedule(steps, denoise)
    s = make_scheduler(solver, total, shift).start_at(skip)
    assert s.num_steps == steps
    sigma0 = s.sigmas[0] if sigma_from is None else sigma_from
    x = sigma0 * noise + (1 - sigma0) * x0
    for t in s.timesteps:
        x = s.step(noise - x0, t, x)
    return x, s


@pytest.mark.parametrize("solver", list(Solver))
@pytest.mark.parametrize("denoise", [1.0, 0.5, 0.3])
def test_partial_run_lands_on_the_clean_latent(solver, denoise):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 8, 8, generator=g).unbind(0)
    x, s = _run_from(x0, noise, solver, 8, 5.0, denoise)
    expected, atol = x0, 1e-5
    if solver in (Solver.COMFY_UNI_PC, Solver.COMFY_UNI_PC_BH2):
        # ComfyUI's uni_pc stops at sigma 0.001 (not 0) and divides by 1 - 0.001, which leaves
        # 0.001 / 0.999 of the noise; and it integrates the flow line in its VE/VP form, which is
        # not exact on it: 1.2e-4 measured at denoise 1 (8 steps), so 5e-4 here
        from wan_core.pipeline.comfy_unipc import SIGMA_FLOOR as f

        expected, atol = x0 + f / (1 - f) * noise, 5e-4
    torch.testing.assert_close(x, expected, rtol=0, atol=atol)
    full = make_scheduler(solver, denoise_schedule(8, denoise)[0], 5.0)
    assert torch.equal(s.sigmas, full.sigmas[-9:]) and torch.equal(s.timesteps, full.timesteps[-8:])
    if denoise < 1:      # the check can fail: starting on the full schedule's first sigma misses x0
        wrong, _ = _run_from(x0, noise, solver, 8, 5.0, denoise, sigma_from=full.sigmas[0])
        assert (wrong - expected).abs().max() > 1e-2


def test_start_at_only_before_the_first_step():
    s = make_scheduler(Solver.UNIPC, 4, 5.0)
    s.step(torch.zeros(1, 2), s.timesteps[0], torch.zeros(1, 2))
    with pytest.raises(RuntimeError, match="before the first step"):
        s.start_at(1)
