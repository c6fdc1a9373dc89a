"""Oracle 2 of issue 12: a run on ComfyUI-format files (fp8_scaled experts, fp8_scaled umT5 with its
own tokenizer, fp16 safetensors VAE) gives the latent of the same run on an official-layout
checkpoint holding the same effective weights (fp8-dequantized / fp16-rounded, written by
tests/_comfy_files.py), in fp32 on CPU: on 1 rank and on 2 gloo ranks with FSDP + Ulysses.

Tolerance 1e-5 relative: the two runs compute the same fp32 math on the same values; what differs
is only the order of some reductions (FSDP/Ulysses vs one rank), as in tests/distributed.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _comfy_files as cf  # noqa: E402
from conftest import rel_err  # noqa: E402

from wan_core.config import (EngineSpec, GenerateRequest, ModelFiles, ParallelConfig, ParamDtype,  # noqa: E402
                             Task)

REQ = dict(prompt="a red fox runs through snow", size=(64, 64), frame_num=5, steps=3, seed=7)


@pytest.fixture(scope="module")
def t2v_files(tiny_dir, tmp_path_factory):
    """(ModelFiles of ComfyUI files, official folder with the same effective weights)."""
    root = tmp_path_factory.mktemp("comfy_latent")
    ckpt = tiny_dir / "ckpt"
    models = root / "models"
    official = root / "official"
    files = {}
    for expert in ("high_noise_model", "low_noise_model"):
        path = models / "diffusion_models" / f"wan2.2_t2v_{expert[:-6]}_14B_fp8_scaled.safetensors"
        eff = cf.write_dit(ckpt / "t2v-A14B" / expert, path, "fp8_scaled", prefix=True)
        cfg = json.loads((ckpt / "t2v-A14B" / expert / "config.json").read_text())
        cfg["text_len"] = 512          # a single file has no config.json: 512, ComfyUI's padding
        cf.write_official_dit(eff, cfg, official / expert)
        files["dit_" + expert[:-6]] = str(path)
    te = models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    eff = cf.write_umt5(ckpt / "shared" / "models_t5_umt5-xxl-enc-bf16.pth", te, "fp8_scaled",
                        tokenizer_json=ckpt / "shared" / "google" / "umt5-xxl" / "tokenizer.json")
    torch.save(eff, official / "models_t5_umt5-xxl-enc-bf16.pth")
    vae = models / "vae" / "wan_2.1_vae.safetensors"
    torch.save(cf.write_vae(ckpt / "shared" / "Wan2.1_VAE.pth", vae, "fp16"), official / "Wan2.1_VAE.pth")
    (official / "google").symlink_to((ckpt / "shared" / "google").resolve())
    mf = ModelFiles(dit_high_noise=files["dit_high_noise"], dit_low_noise=files["dit_low_noise"],
                    text_encoder=str(te), vae=str(vae))
    return mf, official


@pytest.fixture(scope="module")
def official_latent(t2v_files):
    from wan_core.pipeline.engine import WanEngine

    _, official = t2v_files
    eng = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(official), device="cpu",
                               param_dtype=ParamDtype.FP32))
    out = eng.generate(GenerateRequest(**REQ))
    eng.close()
    return out


def test_one_rank_same_latent_and_video(t2v_files, official_latent):
    from wan_core.pipeline.engine import WanEngine

    files, _ = t2v_files
    eng = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir="", device="cpu", param_dtype=ParamDtype.FP32,
                               files=files))
    assert "spiece_model" in eng.tokenizer_source     # the tokenizer came from the umT5 file
    out = eng.generate(GenerateRequest(**REQ))
    assert rel_err(out.latent, official_latent.latent) < 1e-5
    assert (out.video.int() - official_latent.video.int()).abs().max() <= 1   # uint8 rounding


@pytest.mark.slow
def test_two_gloo_ranks_fsdp_ulysses(t2v_files, official_latent):
    from wan_core.client import EngineClient

    files, _ = t2v_files
    spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir="", device="cpu", param_dtype=ParamDtype.FP32, files=files,
                      parallel=ParallelConfig(num_gpus=2, ulysses_size=2, dit_fsdp=True))
    with EngineClient(spec) as client:
        out = client.generate(GenerateRequest(**REQ, decode=False))
    assert rel_err(out.latent, official_latent.latent) < 1e-5
