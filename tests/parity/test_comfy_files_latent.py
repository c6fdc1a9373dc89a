"""Oracle 2 of issue 12: a run on ComfyUI-format files (fp8_scaled experts, fp8_scaled umT5 with its
own tokenizer, fp16 safetensors VAE) gives the latent of the same run on an official-layout
checkpoint holding the same effective weights (fp8-dequantized / fp16-rounded, written by
tests/_comfy_files.py), in fp32 on CPU: on 1 rank and on 2 gloo ranks with FSDP (DiT and T5, shards
in fp8) + Ulysses.

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
    dit = eng.models.models[next(iter(eng.models.models))]
    assert dit.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn    # weights=auto keeps fp8
    assert dit.blocks[0].norm3.weight.dtype == torch.float32                # high precision stays
    assert eng.text_encoder.model.blocks[0].attn.q.weight.dtype == torch.float8_e4m3fn
    # the loader's status line: how each part was read and is held
    assert "high_noise_model fp8_scaled file -> fp8+fp32" in eng.weights_summary, eng.weights_summary
    assert "vae fp32 file -> fp32" in eng.weights_summary or "vae fp16 file -> fp32" in eng.weights_summary
    out = eng.generate(GenerateRequest(**REQ))
    assert rel_err(out.latent, official_latent.latent) < 1e-5
    assert (out.video.int() - official_latent.video.int()).abs().max() <= 1   # uint8 rounding


@pytest.mark.slow
def test_two_gloo_ranks_fsdp_ulysses(t2v_files, official_latent):
    from wan_core.client import EngineClient

    files, _ = t2v_files
    spec = EngineSpec(task=Task.T2V_A14B, ckpt_dir="", device="cpu", param_dtype=ParamDtype.FP32, files=files,
                      parallel=ParallelConfig(num_gpus=2, ulysses_size=2, dit_fsdp=True, t5_fsdp=True))
    with EngineClient(spec) as client:
        out = client.generate(GenerateRequest(**REQ, decode=False))
    assert rel_err(out.latent, official_latent.latent) < 1e-5


def test_weights_fp32_reads_fp8_files_dequantized(t2v_files, official_latent):
    from wan_core.pipeline.engine import WanEngine

    files, _ = t2v_files
    eng = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir="", device="cpu", param_dtype=ParamDtype.FP32,
                               files=files, weights="fp32"))
    dit = eng.models.models[next(iter(eng.models.models))]
    assert dit.blocks[0].self_attn.q.weight.dtype == torch.float32
    out = eng.generate(GenerateRequest(**REQ, decode=False))
    assert rel_err(out.latent, official_latent.latent) < 1e-5


def test_weights_fp8_quantizes_an_official_folder(tiny_dir, tmp_path):
    """weights=fp8 on the official fp32 folder == the official layout holding the per-tensor fp8
    quantized block linears (DiT and T5), the effective weights the converter computes."""
    from wan_core.pipeline.engine import WanEngine

    ckpt = tiny_dir / "ckpt"
    eff_dir = tmp_path / "eff"
    for expert in ("high_noise_model", "low_noise_model"):
        eff = cf.write_dit(ckpt / "t2v-A14B" / expert, tmp_path / f"{expert}.safetensors", "fp8_scaled")
        cfg = json.loads((ckpt / "t2v-A14B" / expert / "config.json").read_text())
        # the converter stores the non-quantized tensors in bf16; weights=fp8 keeps them fp32
        src = cf.read_official_dit(ckpt / "t2v-A14B" / expert)
        eff = {k: (v if v.dtype == torch.float32 and cf._DIT_QUANT.match(k) else src[k].float()) for k, v in eff.items()}
        cf.write_official_dit(eff, cfg, eff_dir / expert)
    t5 = torch.load(ckpt / "shared" / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    t5 = {k: (cf.quantize(v)[0].float() * cf.quantize(v)[1] if cf._T5_QUANT.match(k) else v.float())
          for k, v in t5.items()}
    torch.save(t5, eff_dir / "models_t5_umt5-xxl-enc-bf16.pth")
    for name in ("Wan2.1_VAE.pth", "google"):
        (eff_dir / name).symlink_to((ckpt / "shared" / name).resolve())
    req = GenerateRequest(**REQ, decode=False)
    from _tiny import task_ckpt

    folder = task_ckpt(tiny_dir, "t2v-A14B", tmp_path / "links")
    a = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(folder), device="cpu", param_dtype=ParamDtype.FP32,
                             weights="fp8"))
    assert a.models.models[next(iter(a.models.models))].blocks[1].ffn[2].weight.dtype == torch.float8_e4m3fn
    lat_a = a.generate(req).latent
    a.close()
    b = WanEngine(EngineSpec(task=Task.T2V_A14B, ckpt_dir=str(eff_dir), device="cpu", param_dtype=ParamDtype.FP32))
    lat_b = b.generate(req).latent
    assert rel_err(lat_a, lat_b) < 1e-5
