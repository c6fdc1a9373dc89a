"""Our `euler` sampler and ComfyUI `simple` sigmas against ComfyUI's own code (oracle).

`_comfy_sampling_oracle.py` runs in ComfyUI's Python: ComfyUI's ModelSamplingDiscreteFlow (what
ModelSamplingSD3 sets), `simple_scheduler`, `sample_euler` and its UniPC samplers on an analytic
velocity field. Ours must give the same sigmas bit for bit and the same Euler trajectory bit for bit
(same float32 operations in the same order). ComfyUI's `uni_pc` is a different method from the
official flow UniPC (docs/samplers.md): our `uni_pc` solver reproduces it bit for bit, and the last
test pins how far the official `unipc` is from it.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import comfyui_harness as harness
from conftest import missing
from wan_core.pipeline.schedulers import comfy_simple_sigmas, make_scheduler

ORACLE = Path(__file__).with_name("_comfy_sampling_oracle.py")


@pytest.fixture(scope="module")
def oracle() -> dict:
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    env = dict(os.environ, PYTHONPATH=str(comfy_dir))
    proc = subprocess.run([str(python), str(ORACLE)], cwd=comfy_dir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ORACLE"))
    return json.loads(line[len("ORACLE"):])


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The oracle's analytic model (same expression)."""
    return torch.sin(3 * x + sigma) * 0.5 - 0.1 * x


def _run(solver: str, steps: int, shift: float, noise: torch.Tensor) -> torch.Tensor:
    sch = make_scheduler(solver, steps, shift)
    x = noise * sch.sigmas[0] if solver != "unipc" else noise
    for i, t in enumerate(sch.timesteps):
        x = sch.step(velocity(x, sch.sigmas[i]), t, x)
    return x


def test_simple_sigmas_bit_identical(oracle):
    assert len(oracle["sigmas"]) == 20
    for key, theirs in oracle["sigmas"].items():
        shift, steps = key.split("/")
        assert comfy_simple_sigmas(int(steps), float(shift)).tolist() == theirs, key
    # the template's 4-step shift-5 schedule (docs/comfy_templates.md)
    assert oracle["sigmas"]["5.0/4"] == comfy_simple_sigmas(4, 5.0).tolist()
    assert torch.allclose(comfy_simple_sigmas(4, 5.0), torch.tensor([1.0, 0.9375, 0.8333333, 0.625, 0.0]))


def test_euler_trajectory_bit_identical(oracle):
    noise = torch.tensor(oracle["noise"]).reshape(1, 4, 3, 5, 6)
    for key in ("euler/5.0/4", "euler/8.0/20"):
        _, shift, steps = key.split("/")
        ours = _run("euler", int(steps), float(shift), noise)
        theirs = torch.tensor(oracle["runs"][key]["x"]).reshape(ours.shape)
        assert torch.equal(ours, theirs), (key, (ours - theirs).abs().max())


def test_comfy_uni_pc_trajectory_bit_identical(oracle):
    """Our `uni_pc` / `uni_pc_bh2` (pipeline/comfy_unipc.py) = ComfyUI's KSampler with those samplers
    on `simple` (discarded penultimate sigma, 0.001 floor, final inverse_noise_scaling)."""
    noise = torch.tensor(oracle["noise"]).reshape(1, 4, 3, 5, 6)
    for key in ("uni_pc/8.0/20", "uni_pc_bh2/8.0/20"):
        name, shift, steps = key.split("/")
        ours = _run(name, int(steps), float(shift), noise)
        theirs = torch.tensor(oracle["runs"][key]["x"]).reshape(ours.shape)
        assert torch.equal(ours, theirs), (key, (ours - theirs).abs().max())


def test_euler_timesteps_are_comfy_floats():
    sch = make_scheduler("euler", 4, 5.0)
    assert sch.timesteps.dtype == torch.float32
    assert sch.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0], rel=1e-7)


def test_comfy_uni_pc_is_another_method(oracle):
    """ComfyUI's uni_pc (bh1, order 3, VE parametrisation, its own sigmas) vs the official flow
    UniPC (bh2, order 2): 1-5 % apart on this smooth field at 20 steps, shift 8. Pinned so that a
    change making them agree (or drift further) is noticed and docs/samplers.md updated."""
    noise = torch.tensor(oracle["noise"]).reshape(1, 4, 3, 5, 6)
    ours = _run("unipc", 20, 8.0, noise)
    for key in ("uni_pc/8.0/20", "uni_pc_bh2/8.0/20"):
        theirs = torch.tensor(oracle["runs"][key]["x"]).reshape(ours.shape)
        rel = float((ours - theirs).abs().max() / theirs.abs().max())
        assert 0.005 < rel < 0.05, (key, rel)
