"""ComfyUI single files (tests/_comfy_files.py writes them from the tiny official checkpoints):
recognition, reading under official names with dequantization, the part loaders, and one clear
line for every wrong file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _comfy_files as cf  # noqa: E402

from wan_core.errors import CheckpointError  # noqa: E402
from wan_core.loading import components as comp  # noqa: E402
from wan_core.loading.single_file import SingleFileSource, inspect_file  # noqa: E402

T5_PTH = "shared/models_t5_umt5-xxl-enc-bf16.pth"
TOK = "shared/google/umt5-xxl/tokenizer.json"


@pytest.fixture(scope="module")
def files(tiny_dir, tmp_path_factory):
    return tmp_path_factory.mktemp("comfy_files"), tiny_dir / "ckpt"


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("encoding", cf.ENCODINGS)
def test_dit_encodings_load_the_effective_weights(files, encoding, prefix):
    out, ckpt = files
    path = out / f"t2v_{encoding}_{prefix}.safetensors"
    eff = cf.write_dit(ckpt / "t2v-A14B" / "high_noise_model", path, encoding, prefix=prefix)
    info = inspect_file(path, expect="dit")
    assert info.encoding == encoding.replace("_meta", "")
    assert info.prefix == ("model.diffusion_model." if prefix else "")
    assert info.details["config"]["model_type"] == "t2v" and info.details["config"]["in_dim"] == 16
    model = comp.load_dit_file(path, dtype=torch.float32)
    sd = model.state_dict()
    assert set(sd) == set(eff)
    for k, v in eff.items():   # exact: fp8 * scale in fp32 is one rounding, the same on both sides
        assert torch.equal(sd[k], v), k
    if encoding.startswith("fp8"):   # quantized linears really were fp8 in the file
        with SingleFileSource(info) as src:
            assert src.stored_dtype("blocks.0.self_attn.q.weight") == torch.float8_e4m3fn
            assert src.stored_dtype("blocks.0.norm3.weight") != torch.float8_e4m3fn
            assert (src.scale_of("blocks.0.self_attn.q.weight") is None) == (encoding == "fp8_e4m3fn")


def test_get_slice_dequantizes_rows(files):
    out, ckpt = files
    path = out / "slice.safetensors"
    eff = cf.write_dit(ckpt / "t2v-A14B" / "low_noise_model", path, "fp8_scaled", prefix=True)
    with SingleFileSource(inspect_file(path)) as src:
        k = "blocks.1.ffn.0.weight"
        assert torch.equal(src.get_slice(k, 0, 3, 9), eff[k][3:9])
        assert torch.equal(src.get_slice(k, 1, 5, 7, dtype=torch.bfloat16), eff[k][:, 5:7].bfloat16())


@pytest.mark.parametrize("task,model_type,in_dim", [("i2v-A14B/high_noise_model", "i2v", 36),
                                                    ("ti2v-5B", "ti2v", 48)])
def test_model_type_from_in_dim(files, task, model_type, in_dim):
    out, ckpt = files
    path = out / f"{model_type}.safetensors"
    cf.write_dit(ckpt / task, path, "bf16")
    cfg = comp.dit_file_config(path)
    assert (cfg["model_type"], cfg["in_dim"], cfg["num_heads"], cfg["text_len"]) == (model_type, in_dim, 2, 512)


def test_s2v_file_with_audio_layers(files):
    out, ckpt = files
    path = out / "s2v.safetensors"
    eff = cf.write_dit(ckpt / "s2v-14B", path, "fp8_scaled", prefix=True)
    model = comp.load_dit_file(path, dtype=torch.float32, s2v=True)
    sd = model.state_dict()
    assert any(k.startswith("audio_injector.") for k in sd) and set(sd) == set(eff)
    assert all(torch.equal(sd[k], v) for k, v in eff.items())
    official = json.loads((ckpt / "s2v-14B" / "config.json").read_text())
    assert model.s2v_cfg.audio_inject_layers == tuple(official["audio_inject_layers"])
    assert model.s2v_cfg.audio_dim == official["audio_dim"]
    with pytest.raises(CheckpointError, match="S2V"):
        comp.load_dit_file(path, s2v=False)


@pytest.mark.parametrize("encoding", ["fp16", "fp8_scaled"])
def test_umt5_file_and_its_tokenizer(files, encoding):
    out, ckpt = files
    path = out / f"umt5_{encoding}.safetensors"
    eff = cf.write_umt5(ckpt / T5_PTH, path, encoding, tokenizer_json=ckpt / TOK)
    info = inspect_file(path, expect="text_encoder")
    assert info.encoding == encoding and info.details["tokenizer_in_file"]
    t5 = comp.load_t5_file(path, dtype=torch.float32)
    sd = t5.state_dict()
    assert set(sd) == set(eff) and all(torch.equal(sd[k], v) for k, v in eff.items())
    tok, where = comp.file_tokenizer(path, text_len=32)
    assert "spiece_model" in where
    from wan_core.loading.tokenizer import PromptTokenizer

    ref = PromptTokenizer(ckpt / "shared" / "google" / "umt5-xxl", 32)
    prompts = ["A cat walks  in the park, at noon!", "二只猫 & ünïcode &amp; 123", ""]
    for a, b in zip(tok(prompts), ref(prompts)):
        assert torch.equal(a, b)


def test_umt5_without_tokenizer_needs_a_folder(files):
    out, ckpt = files
    path = out / "umt5_notok.safetensors"
    cf.write_umt5(ckpt / T5_PTH, path, "fp16")
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        comp.file_tokenizer(path, 32)
    tok, where = comp.file_tokenizer(path, 32, fallback_dir=ckpt / "shared" / "google" / "umt5-xxl")
    assert where.endswith("tokenizer.json")


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_vae_files(files, version):
    out, ckpt = files
    path = out / f"vae{version}.safetensors"
    eff = cf.write_vae(ckpt / "shared" / f"Wan{version}_VAE.pth", path, "fp16")
    vae = comp.load_vae_file(path, version)
    sd = vae.state_dict()
    assert all(torch.equal(sd[k], eff[k]) for k in eff)
    other = "2.2" if version == "2.1" else "2.1"
    with pytest.raises(CheckpointError, match=f"is a Wan{version} VAE.*needs the Wan{other} VAE"):
        comp.load_vae_file(path, other)


def test_wav2vec2_file_matches_the_folder(files):
    out, ckpt = files
    folder = ckpt / "s2v-14B" / "wav2vec2-large-xlsr-53-english"
    path = out / "w2v.safetensors"
    cf.write_wav2vec2(folder, path, "fp32")
    from wan_core.loading.wav2vec2 import load_wav2vec2

    a, b = comp.load_wav2vec2_file(path), load_wav2vec2(folder)
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sb)


# -- one line naming the file and what was expected -------------------------------------------


def _save(path: Path, tensors: dict, metadata=None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_bad_files(files):
    out, ckpt = files
    z = torch.zeros(2, 2)
    cases = {
        "sdxl": ({"model.diffusion_model.input_blocks.0.0.weight": z, "conditioner.embedders.0.x": z}, "SD1/SDXL"),
        "flux": ({"double_blocks.0.img_attn.qkv.weight": z}, "Flux"),
        "lora": ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": z}, "is a LoRA"),
        "lora2": ({"blocks.0.self_attn.q.lora_down.weight": z, "blocks.0.self_attn.q.alpha": z[0, 0]}, "is a LoRA"),
        "clip": ({"text_model.encoder.layers.0.mlp.fc1.weight": z}, "CLIP"),
    }
    for name, (tensors, msg) in cases.items():
        p = _save(out / f"{name}.safetensors", tensors)
        with pytest.raises(CheckpointError, match=msg) as e:
            inspect_file(p, expect="dit")
        assert str(p) in str(e.value) and "expected a diffusion model" in str(e.value)
        assert "\n" not in str(e.value)


def test_wan_13b_and_wrong_part(files):
    out, ckpt = files
    d = {"patch_embedding.weight": torch.zeros(1536, 16, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(1, 1),
         "head.head.weight": torch.zeros(64, 1536), "blocks.0.ffn.0.weight": torch.zeros(8960, 1),
         "time_embedding.0.weight": torch.zeros(1536, 256), "blocks.29.norm3.weight": torch.zeros(1)}
    p = _save(out / "wan21_13b.safetensors", d)
    with pytest.raises(CheckpointError, match="1.3B"):
        inspect_file(p, expect="dit")
    vae = out / "vae_as_dit.safetensors"
    cf.write_vae(ckpt / "shared" / "Wan2.1_VAE.pth", vae)
    with pytest.raises(CheckpointError, match="is a Wan VAE file; expected a diffusion model"):
        inspect_file(vae, expect="dit")


def test_truncated_file(files):
    out, ckpt = files
    good = out / "full.safetensors"
    cf.write_dit(ckpt / "ti2v-5B", good, "bf16")
    bad = out / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        inspect_file(bad, expect="dit")


def test_t5_xxl_is_not_umt5(files):
    out, _ = files
    d = {"shared.weight": torch.zeros(32128, 8), "encoder.final_layer_norm.weight": torch.zeros(8),
         "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(8, 8),
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(32, 2),
         "encoder.block.0.layer.1.DenseReluDense.wi_1.weight": torch.zeros(8, 8)}
    p = _save(out / "t5xxl_fp16.safetensors", d)
    with pytest.raises(CheckpointError, match="not umT5-XXL.*T5-XXL of SD3/Flux"):
        inspect_file(p, expect="text_encoder")


def test_unsupported_quant_format(files):
    out, _ = files
    d = {"patch_embedding.weight": torch.zeros(256, 16, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(1, 1),
         "head.head.weight": torch.zeros(64, 256), "blocks.0.ffn.0.weight": torch.zeros(8, 1),
         "time_embedding.0.weight": torch.zeros(256, 256)}
    meta = {"_quantization_metadata": json.dumps({"layers": {"blocks.0.self_attn.q": {"format": "nvfp4"}}})}
    p = _save(out / "nvfp4.safetensors", d, meta)
    with pytest.raises(CheckpointError, match="nvfp4"):
        inspect_file(p, expect="dit")


def test_random_fp8_scaled_writer_for_benchmarks(files):
    """The writer the GPU benchmarks use for full-size random fp8_scaled experts, at tiny size."""
    out, ckpt = files
    cfg = json.loads((ckpt / "t2v-A14B" / "high_noise_model" / "config.json").read_text())
    path = cf.write_random_fp8_scaled_dit(cfg, out / "random_fp8.safetensors")
    info = inspect_file(path, expect="dit")
    assert (info.encoding, info.scheme, info.prefix) == ("fp8_scaled", "scale_weight", "model.diffusion_model.")
    model = comp.load_dit_any(path, torch.float32, "cpu")     # weights=auto: the linears stay fp8
    assert model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    x = torch.randn(1, 16, 1, 8, 8)
    y = model(x, torch.tensor([500.0]), torch.randn(1, 4, 4096), seq_len=16)
    assert y.shape == x.shape and torch.isfinite(y).all()
