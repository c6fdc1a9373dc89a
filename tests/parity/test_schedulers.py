"""UniPC and DPM++ against the official schedulers (golden sched) and the pipeline goldens.

Tolerances:
- timesteps: exact (int64; the MoE boundary and the model input depend on every integer).
- sigmas: 1e-7 absolute (float32 values near 1 are 6e-8 apart; measured difference: 0).
- 10-step trajectories: rel_err <= 1e-6 per step. The coefficients are float32 scalars computed
  in the official order, so the measured difference is 0; 1e-6 allows a reordered but equivalent
  float32 formula, while a wrong order, a missing corrector or a swapped coefficient moves the
  trajectory by > 1e-4 (see test_tolerance_catches_a_wrong_corrector).
The tests without `golden` need no shared folder: scheduler interface and an analytic check.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import rel_err
from wan_core.config import Solver
from wan_core.errors import ConfigError
from wan_core.pipeline.schedulers import (FlowDPMppScheduler, FlowUniPCScheduler,
                                          get_sampling_sigmas, make_scheduler)

TRAJ_TOL = 1e-6
SIGMA_ATOL = 1e-7
TABLES = [(40, 12), (40, 5), (50, 5), (40, 3), (4, 12)]
SOLVERS = {"unipc": Solver.UNIPC, "dpm": Solver.DPMPP}


@pytest.mark.parametrize("prefix", SOLVERS)
@pytest.mark.parametrize("steps,shift", TABLES)
def test_tables(golden, prefix, steps, shift):
    g = golden("sched")
    s = make_scheduler(SOLVERS[prefix], steps, float(shift))
    expected_t = g[f"{prefix}_{steps}_{shift}_timesteps"]
    assert s.timesteps.dtype == torch.int64
    assert torch.equal(s.timesteps, expected_t), f"{s.timesteps.tolist()} != {expected_t.tolist()}"
    expected_s = g[f"{prefix}_{steps}_{shift}_sigmas"]
    assert s.sigmas.dtype == torch.float32 and s.sigmas.shape == expected_s.shape
    torch.testing.assert_close(s.sigmas, expected_s, rtol=0, atol=SIGMA_ATOL)


def _run_trajectory(g, solver: str, scheduler=None):
    """The golden's recipe: v = (noise - x0)(1 + 0.1 sin i) + 0.05 x sigma, sigma = t / 1000."""
    noise, target = g["traj_noise"], g["traj_x0_target"]
    s = scheduler or make_scheduler(solver, 10, 5.0)
    x = noise.clone()
    out = []
    for i, t in enumerate(s.timesteps):
        sigma = t / 1000
        v = (noise - target) * (1 + 0.1 * math.sin(i)) + 0.05 * x * sigma
        x = s.step(v, t, x)
        out.append(x)
    return out


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_trajectory(golden, solver):
    g = golden("sched")
    xs = _run_trajectory(g, solver)
    assert len(xs) == 10
    for i, x in enumerate(xs):
        err = rel_err(x, g[f"traj_{solver}_step{i:02d}"])
        assert err <= TRAJ_TOL, f"{solver} step {i}: rel_err {err:.2e}"


def test_tolerance_catches_a_wrong_corrector(golden, monkeypatch):
    """A check that cannot fail is a defect: the UniC corrector of order 1 instead of 2 must fail."""
    g = golden("sched")
    s = FlowUniPCScheduler(10, 5.0)
    real_correct = FlowUniPCScheduler._correct

    def first_order_correct(self, x0_new, sample):
        self._prev_order = 1
        return real_correct(self, x0_new, sample)

    monkeypatch.setattr(FlowUniPCScheduler, "_correct", first_order_correct)
    worst = max(rel_err(x, g[f"traj_unipc_step{i:02d}"])
                for i, x in enumerate(_run_trajectory(g, "unipc", s)))
    assert worst > 100 * TRAJ_TOL


# Pipeline settings of the tiny README ("Settings of every run"): (solver, steps, shift) -> DiT t.
PIPELINE_TIMESTEPS = [
    ("unipc", 4, 12.0, [999, 972, 922, 799]),    # T2V
    ("dpm++", 4, 12.0, [1000, 972, 923, 800]),   # T2V, second run
    ("unipc", 4, 5.0, [999, 937, 833, 624]),     # I2V
    ("unipc", 3, 5.0, [999, 908, 713]),          # TI2V text and image
    ("unipc", 2, 3.0, [999, 749]),               # S2V, per clip
]


@pytest.mark.parametrize("solver,steps,shift,expected", PIPELINE_TIMESTEPS)
def test_pipeline_timesteps_table(solver, steps, shift, expected):
    assert make_scheduler(solver, steps, shift).timesteps.tolist() == expected


# golden file, key prefix, solver, steps, shift, calls per step
PIPELINE_GOLDENS = [
    ("pipe_t2v", "unipc_", "unipc", 4, 12.0),
    ("pipe_t2v", "dpm++_", "dpm++", 4, 12.0),
    ("pipe_i2v", "", "unipc", 4, 5.0),
    ("pipe_ti2v", "t2v_", "unipc", 3, 5.0),
    ("pipe_ti2v", "i2v_", "unipc", 3, 5.0),
    ("pipe_s2v", "", "unipc", 2, 3.0),
]


@pytest.mark.parametrize("name,prefix,solver,steps,shift", PIPELINE_GOLDENS)
def test_pipeline_golden_timesteps(golden, name, prefix, solver, steps, shift):
    """The `t` recorded at every DiT call: calls 2s and 2s+1 (cond, uncond) are step s; S2V runs a
    fresh scheduler per clip; TI2V records per-token t whose non-zero entries are the step's."""
    g = golden(name)
    calls = sorted(k for k in g if k.startswith(prefix) and k.endswith("_t")
                   and k[len(prefix):].startswith("call"))
    assert calls, f"no DiT calls with prefix {prefix!r} in {name}"
    expected = make_scheduler(solver, steps, shift).timesteps.tolist()
    for n, key in enumerate(calls):
        t = g[key].flatten()
        step = (n // 2) % steps
        assert float(t.max()) == expected[step], f"{name}:{key} t={float(t.max())} != {expected[step]}"


# ---- no golden needed ---------------------------------------------------------------------


@pytest.mark.parametrize("solver", [s for s in Solver if not s.value.startswith("uni_pc")])
def test_straight_path_is_exact(solver):
    """For a constant velocity eps - x0 the flow is a straight line; the flow solvers (and Euler) are
    exact on it, so every step lands on it and the last step returns x0 (sigma = 0). ComfyUI's
    uni_pc works in a VE parametrisation and is not (tests/comfy/test_comfy_sampling.py checks it
    against ComfyUI itself)."""
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    s = make_scheduler(solver, 7, 5.0)
    x = eps.clone() if solver is Solver.DPMPP else (1 - s.sigmas[0]) * x0 + s.sigmas[0] * eps
    for i, t in enumerate(s.timesteps):
        x = s.step(eps - x0, t, x)
        on_path = (1 - s.sigmas[i + 1]) * x0 + s.sigmas[i + 1] * eps
        assert rel_err(x, on_path) < 1e-5, f"step {i}"
    assert rel_err(x, x0) < 1e-5


def test_interface():
    for solver, cls in ((Solver.UNIPC, FlowUniPCScheduler), (Solver.DPMPP, FlowDPMppScheduler)):
        s = make_scheduler(solver.value, 5, 5.0)
        assert isinstance(s, cls) and s.num_steps == 5
        assert s.timesteps.shape == (5,) and s.sigmas.shape == (6,) and float(s.sigmas[-1]) == 0.0
        assert (s.timesteps[1:] < s.timesteps[:-1]).all()
    assert make_scheduler("dpm++", 1, 1.0).timesteps.tolist() == [1000]
    assert make_scheduler("unipc", 1, 1.0).timesteps.tolist() == [999]
    assert get_sampling_sigmas(4, 1.0).tolist() == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=2.5), dict(shift=0.0), dict(shift=float("inf")),
                                 dict(shift=float("nan")), dict(solver="heun")])
def test_bad_arguments(bad):
    args = dict(solver="unipc", steps=4, shift=5.0) | bad
    with pytest.raises(ConfigError):
        make_scheduler(**args)


@pytest.mark.parametrize("solver", list(Solver))
def test_misuse_is_reported_and_dtype_kept(solver):
    s = make_scheduler(solver, 2, 5.0)
    x = torch.randn(1, 2, 3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="expects timestep"):
        s.step(x, int(s.timesteps[1]), x)           # out of order
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x)
        assert x.dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="new scheduler"):
        s.step(x, 0, x)
