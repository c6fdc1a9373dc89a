"""LoRAs on every layout: worker groups of 2 gloo ranks (FSDP2 + Ulysses, CFG-parallel) and the
offload modes, against one process with the same LoRAs (tiny t2v-A14B, fp32, CPU).

Between requests the LoRA set changes (added, re-weighted, removed) on the same worker group: the
worker pids stay the same, and the request without LoRA after them gives the group's own first
no-LoRA latent bit for bit (base weights restored exactly on every rank's shard).

Tolerance 1e-5 against one process: the bound of tests/distributed/test_runtime.py (Ulysses / FSDP
change GEMM row counts and so the summation order; measured 0.0 there).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_core.client import EngineClient
from wan_core.config import (EngineSpec, GenerateRequest, LoraSpec, LoraTarget, OffloadMode,
                             ParallelConfig, ParamDtype, Task)
from wan_core.errors import ConfigError
from wan_core.loading.checkpoint import dit_on_meta
from wan_core.loading.lora import param_shapes, random_lora

TOL = 1e-5
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def rel_err(a, e) -> float:
    a, e = a.double(), e.double()
    return float((a - e).abs().max() / e.abs().max())


@pytest.fixture(scope="module")
def ckpt(tiny_dir, tmp_path_factory) -> Path:
    from tests.parity._tiny import task_ckpt

    return task_ckpt(tiny_dir, "t2v-A14B", tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def loras(ckpt, tmp_path_factory) -> dict:
    """One LoRA per expert, in two key formats (diffusion_model lora_down/up + alpha + diff_b;
    kohya lora_unet_)."""
    folder = tmp_path_factory.mktemp("loras")
    out = {}
    for expert, fmt, seed in (("high_noise_model", "diffusion_model", 1), ("low_noise_model", "lora_unet", 2)):
        with dit_on_meta(ckpt / expert) as (meta, _s, _v):
            shapes = param_shapes(meta)
        sd = random_lora(shapes, rank=8, fmt=fmt, seed=seed, scale=0.05, diff_b=True)
        path = folder / f"{expert}_{fmt}.safetensors"
        save_file(sd, str(path))
        out[expert] = str(path)
    return out


def _spec(ckpt, **parallel) -> EngineSpec:
    return EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(ckpt), device="cpu", param_dtype=ParamDtype.FP32,
                      parallel=ParallelConfig(**parallel))


def _requests(loras, guide=1.0, solver="euler"):
    high, low = loras["high_noise_model"], loras["low_noise_model"]
    base = dict(prompt="a red fox running through snow", size=(64, 48), frame_num=5, steps=4, shift=5.0,
                guide_scale=guide, solver=solver, switch_step=2, seed=7, decode=False)
    return [
        GenerateRequest(**base),
        GenerateRequest(**base, loras=(LoraSpec(high, 1.0, LoraTarget.HIGH_NOISE),
                                       LoraSpec(low, 1.0, LoraTarget.LOW_NOISE))),
        GenerateRequest(**base, loras=(LoraSpec(high, 0.5, LoraTarget.BOTH),
                                       LoraSpec(low, 1.5, LoraTarget.LOW_NOISE))),
        GenerateRequest(**base),
    ]


def _in_process(ckpt, requests, **parallel):
    from wan_core.pipeline.engine import WanEngine

    engine = WanEngine(_spec(ckpt, **parallel))
    try:
        return [engine.generate(r).latent for r in requests]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def reference(ckpt, loras):
    return {"euler": _in_process(ckpt, _requests(loras)),
            "cfg": _in_process(ckpt, _requests(loras, guide=3.5, solver="unipc")[:2])}


def _check(latents, ref):
    assert torch.equal(latents[3], latents[0])         # LoRAs removed: the base model exactly
    for got, want in zip(latents, ref):
        assert rel_err(got, want) <= TOL
    assert rel_err(latents[1], latents[0]) > 1e-3 and rel_err(latents[2], latents[1]) > 1e-3


def test_fsdp_ulysses_two_ranks(ckpt, loras, reference):
    with EngineClient(_spec(ckpt, num_gpus=2, ulysses_size=2, dit_fsdp=True), start_timeout_s=120) as c:
        pids = list(c.pids)
        latents = [c.generate(r).latent for r in _requests(loras)]
        assert c.pids == pids and c.alive          # same worker group throughout
    _check(latents, reference["euler"])


def test_cfg_parallel_two_ranks(ckpt, loras, reference):
    with EngineClient(_spec(ckpt, num_gpus=2, cfg_parallel=True), start_timeout_s=120) as c:
        latents = [c.generate(r).latent for r in _requests(loras, guide=3.5, solver="unipc")[:2]]
        with pytest.raises(ConfigError, match="ulysses_size"):      # guidance 1: refused, says what to use
            c.generate(_requests(loras)[1])
        assert c.alive
    for got, want in zip(latents, reference["cfg"]):
        assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("offload", [OffloadMode.EXPERTS, OffloadMode.BLOCKS])
def test_offload(ckpt, loras, reference, offload):
    """On a CPU device offload moves nothing (master == resident copy), so results are bit-identical;
    the masters path of loading/lora.py is exercised all the same."""
    latents = _in_process(ckpt, _requests(loras)[1:3], offload=offload)    # LoRAs, then re-weighted
    for got, want in zip(latents, reference["euler"][1:3]):
        assert torch.equal(got, want)
