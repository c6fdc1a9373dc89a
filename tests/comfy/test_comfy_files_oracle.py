"""Oracle 1 of issue 12: ComfyUI's own loaders read the ComfyUI-format files that
tests/_comfy_files.py writes, and the weights we dequantize equal ComfyUI's, tensor for tensor
(fp32; exact: both sides compute fp8.float() * scale, one fp32 rounding).

Not covered here, with the reason: the S2V DiT, the 2.2 VAE and wav2vec2 (ComfyUI's classes fix
audio_dim 1024, the 2.2 VAE widths and embed_dim 1024|768, so it cannot build the tiny ones; tests/unit/test_single_file.py checks those
files against the official folders instead)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _comfy_files as cf  # noqa: E402
import comfyui_harness as harness  # noqa: E402
from conftest import missing  # noqa: E402

from wan_core.loading import components as comp  # noqa: E402
from wan_core.loading.single_file import t5_hf_to_official  # noqa: E402

SCRIPT = Path(__file__).with_name("comfy_read_files.py")
PROMPTS = ("a cat walks in the park", "The Quick brown fox, jumps over 2 dogs!")
DITS = {  # file stem -> (tiny folder, encoding, prefix)
    "t2v_high_fp8_scaled": ("t2v-A14B/high_noise_model", "fp8_scaled", True),
    "i2v_low_fp8_scaled_meta": ("i2v-A14B/low_noise_model", "fp8_scaled_meta", False),
    "ti2v_fp16": ("ti2v-5B", "fp16", False),
    "t2v_low_fp8_e4m3fn": ("t2v-A14B/low_noise_model", "fp8_e4m3fn", True),
}


@pytest.fixture(scope="module")
def comfy_read(tiny_dir, tmp_path_factory):
    comfy_dir, python, why = harness.locate()
    if comfy_dir is None:
        missing(why)
    out = tmp_path_factory.mktemp("oracle1")
    ckpt = tiny_dir / "ckpt"
    jobs = []
    for stem, (folder, enc, prefix) in DITS.items():
        cf.write_dit(ckpt / folder, out / f"{stem}.safetensors", enc, prefix=prefix)
        jobs.append(f"dit={out / stem}.safetensors")
    cf.write_umt5(ckpt / "shared" / "models_t5_umt5-xxl-enc-bf16.pth", out / "umt5_fp8.safetensors",
                  "fp8_scaled", tokenizer_json=ckpt / "shared" / "google" / "umt5-xxl" / "tokenizer.json")
    jobs.append(f"t5={out / 'umt5_fp8.safetensors'}")
    for v in ("2.1",):
        cf.write_vae(ckpt / "shared" / f"Wan{v}_VAE.pth", out / f"vae{v}.safetensors", "fp16")
        jobs.append(f"vae={out / f'vae{v}.safetensors'}")
    proc = subprocess.run([str(python), str(SCRIPT), str(comfy_dir), str(out), *jobs], cwd=comfy_dir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def read(kind: str, stem: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(out / f"{kind}__{stem}.safetensors"))

    read.out = out
    return read


def _without_scales(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.endswith(("_scale", "scale_input", ".comfy_quant"))}


@pytest.mark.parametrize("stem", list(DITS))
def test_dit_weights_equal_comfyui(comfy_read, stem):
    theirs = _without_scales(comfy_read("dit", stem))
    ours = comp.load_dit_file(comfy_read.out / f"{stem}.safetensors", dtype=torch.float32).state_dict()
    assert set(theirs) == set(ours)
    bad = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not bad, bad[:5]


def test_umt5_weights_and_tokens_equal_comfyui(comfy_read):
    raw = comfy_read("t5", "umt5_fp8")
    theirs = {}
    for k, v in _without_scales(raw).items():
        if k.startswith("umt5xxl.transformer."):
            name = t5_hf_to_official(k[len("umt5xxl.transformer."):])
            if name is not None:
                theirs[name] = v
    path = comfy_read.out / "umt5_fp8.safetensors"
    ours = comp.load_t5_file(path, dtype=torch.float32).state_dict()
    assert set(theirs) == set(ours)
    bad = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not bad, bad[:5]
    tok, where = comp.file_tokenizer(path, text_len=64)
    ids, mask = tok(list(PROMPTS))
    for i in range(len(PROMPTS)):
        comfy_ids = raw[f"tokens.{i}"]
        n = int(mask[i].sum())
        assert torch.equal(ids[i, :n], comfy_ids[:n]), (ids[i, :n], comfy_ids[:n])
        assert (comfy_ids[n:] == 0).all()   # ComfyUI pads with 0 after </s>


@pytest.mark.parametrize("version", ["2.1"])
def test_vae_weights_equal_comfyui(comfy_read, version):
    theirs = comfy_read("vae", f"vae{version}")
    ours = comp.load_vae_file(comfy_read.out / f"vae{version}.safetensors", version).state_dict()
    assert set(ours) <= set(theirs)
    bad = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not bad, bad[:5]
