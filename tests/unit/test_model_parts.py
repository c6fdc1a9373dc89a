"""Parts given as ComfyUI single files (--dit*, --text_encoder, --vae, --audio_encoder): resolution
against --ckpt_dir, the checks against the task before any worker starts, and the CLI flags."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _comfy_files as cf  # noqa: E402

from wan_core.config import ModelFiles, Task, WeightsMode  # noqa: E402
from wan_core.errors import CheckpointError, ConfigError  # noqa: E402
from wan_core.loading.parts import check_parts, resolve_parts  # noqa: E402


@pytest.fixture(scope="module")
def made(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    ck = tiny_dir / "ckpt"
    out = {}
    for name, folder, enc in (("t2v_high", "t2v-A14B/high_noise_model", "fp8_scaled"),
                              ("t2v_low", "t2v-A14B/low_noise_model", "fp8_scaled"),
                              ("i2v_high", "i2v-A14B/high_noise_model", "bf16"),
                              ("ti2v", "ti2v-5B", "fp16")):
        out[name] = root / f"{name}.safetensors"
        cf.write_dit(ck / folder, out[name], enc, prefix=True)
    for v in ("2.1", "2.2"):
        out[f"vae{v}"] = root / f"vae{v}.safetensors"
        cf.write_vae(ck / "shared" / f"Wan{v}_VAE.pth", out[f"vae{v}"])
    out["te"] = root / "umt5.safetensors"
    cf.write_umt5(ck / "shared" / "models_t5_umt5-xxl-enc-bf16.pth", out["te"], "fp16",
                  tokenizer_json=ck / "shared" / "google" / "umt5-xxl" / "tokenizer.json")
    return {k: str(v) for k, v in out.items()}


def test_every_part_from_files_needs_no_folder(made):
    files = ModelFiles(dit_high_noise=made["t2v_high"], dit_low_noise=made["t2v_low"],
                       text_encoder=made["te"], vae=made["vae2.1"])
    parts = resolve_parts(Task.T2V_A14B, None, files)
    infos = check_parts(parts)
    assert infos["high_noise_model"].encoding == "fp8_scaled" and infos["vae"].details["z_dim"] == 16
    with pytest.raises(ConfigError, match="--text_encoder"):
        resolve_parts(Task.T2V_A14B, None, ModelFiles(dit_high_noise=made["t2v_high"], dit_low_noise=made["t2v_low"],
                                                      vae=made["vae2.1"]))


def test_files_replace_parts_of_the_folder(made, tiny_dir):
    ck = tiny_dir / "ckpt" / "t2v-A14B"
    parts = resolve_parts("t2v-A14B", ck, ModelFiles(vae=made["vae2.1"]))
    assert parts.vae == Path(made["vae2.1"]) and parts.dits["high_noise_model"] == ck / "high_noise_model"
    assert parts.text_encoder == ck / "models_t5_umt5-xxl-enc-bf16.pth"


def test_t2v_expert_given_for_i2v(made):
    parts = resolve_parts(Task.I2V_A14B, None, ModelFiles(
        dit_high_noise=made["i2v_high"], dit_low_noise=made["t2v_low"], text_encoder=made["te"], vae=made["vae2.1"]))
    with pytest.raises(CheckpointError, match=r"t2v_low.safetensors is a T2V expert \(in_dim 16\); i2v-A14B needs "
                                              r"i2v weights \(in_dim 36\)"):
        check_parts(parts)


def test_21_vae_given_to_ti2v(made):
    parts = resolve_parts(Task.TI2V_5B, None, ModelFiles(dit=made["ti2v"], text_encoder=made["te"], vae=made["vae2.1"]))
    with pytest.raises(CheckpointError, match="is a Wan2.1 VAE.*ti2v-5B needs the Wan2.2 VAE"):
        check_parts(parts)


def test_flag_shapes():
    with pytest.raises(ConfigError, match="two experts"):
        resolve_parts(Task.T2V_A14B, "x", ModelFiles(dit="a.safetensors"))
    with pytest.raises(ConfigError, match="one model"):
        resolve_parts(Task.TI2V_5B, "x", ModelFiles(dit_low_noise="a.safetensors"))
    with pytest.raises(ConfigError, match="s2v-14B only"):
        resolve_parts(Task.TI2V_5B, "x", ModelFiles(audio_encoder="a.safetensors"))


def test_cli_flags(made):
    from wan_core.cli import build_parser, build_spec

    args = build_parser().parse_args(
        ["generate", "--task", "t2v-A14B", "--dit_high_noise", made["t2v_high"], "--dit_low_noise", made["t2v_low"],
         "--text_encoder", made["te"], "--vae", made["vae2.1"], "--weights", "fp16", "--device", "cpu"])
    spec = build_spec(args, Task.T2V_A14B)
    assert spec.ckpt_dir == "" and spec.files.vae == made["vae2.1"] and spec.weights == WeightsMode.FP16
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices["generate"]._actions
                   if a.dest == "weights").choices
    assert choices == ["auto", "bf16", "fp16", "fp32", "fp8", "fp8_fast"]
    bare = build_parser().parse_args(["generate", "--task", "t2v-A14B", "--device", "cpu"])
    with pytest.raises(ConfigError, match="--ckpt_dir is required"):
        build_spec(bare, Task.T2V_A14B)


def test_doctor_says_how_each_part_is_read_and_held(made, capsys):
    from wan_core.cli import main

    code = main(["doctor", "--task", "t2v-A14B", "--dit_high_noise", made["t2v_high"], "--dit_low_noise",
                 made["t2v_low"], "--text_encoder", made["te"], "--vae", made["vae2.1"], "--no_selftest"])
    out = capsys.readouterr().out
    assert code == 0 and "Model files:" in out, out
    assert "high_noise_model: t2v_high.safetensors: fp8_scaled (scale_weight) single file -> fp8 linears + bf16" in out
    assert "text_encoder: umt5.safetensors: fp16 single file -> bf16" in out
    assert "vae: vae2.1.safetensors: fp32 single file -> fp32" in out
    main(["doctor", "--task", "i2v-A14B", "--dit_high_noise", made["i2v_high"], "--dit_low_noise", made["t2v_low"],
          "--text_encoder", made["te"], "--vae", made["vae2.1"], "--no_selftest", "--weights", "fp16"])
    out = capsys.readouterr().out
    assert "is a T2V expert (in_dim 16); i2v-A14B needs i2v weights" in out, out
