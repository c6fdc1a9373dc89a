"""`python -m wan_core generate --task s2v-14B` on the tiny checkpoint: the mp4 holds H.264 video and
the input audio as AAC with durations within one frame; --save_latent holds the last clip's latent
and every clip's; bad input gives one `error:` line, exit code 2 and no file."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def s2v_ckpt(tiny_dir, tmp_path_factory):
    from _tiny import task_ckpt

    return task_ckpt(tiny_dir, "s2v-14B", tmp_path_factory.mktemp("cli_s2v"))


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "wan_core", "generate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _base(ckpt, tiny_dir, out):
    return ["--task", "s2v-14B", "--ckpt_dir", ckpt, "--device", "cpu", "--size", "128*128",
            "--image", tiny_dir / "inputs" / "s2v_ref.png", "--save_file", out,
            "--prompt", "a person is singing", "--base_seed", "42"]


@pytest.mark.slow
def test_cli_s2v_mp4_with_audio(s2v_ckpt, tiny_dir, tmp_path):
    from safetensors.torch import load_file

    from wan_core.io.audio import probe_media

    out, lat = tmp_path / "out.mp4", tmp_path / "lat.safetensors"
    r = _cli(*_base(s2v_ckpt, tiny_dir, out), "--audio", tiny_dir / "inputs" / "test.wav",
             "--infer_frames", 16, "--num_clip", 1, "--sample_steps", 1, "--save_latent", lat)
    assert r.returncode == 0, r.stderr
    info = probe_media(out)
    assert info.video_codec == "h264" and info.audio_codec == "aac" and info.fps == 16
    assert info.video_frames == 13                      # one clip: 16 frames minus the first 3
    assert abs(info.video_duration_s - info.audio_duration_s) <= 1 / 16
    tensors = load_file(str(lat))
    assert sorted(tensors) == ["clip0", "latent"]
    assert tensors["latent"].shape == (16, 4, 16, 16)
    assert (tensors["latent"] == tensors["clip0"]).all()


@pytest.mark.parametrize("extra,message", [
    (["--audio", "MISSING"], "does not exist"),
    (["--audio", "EMPTY"], "empty"),
    (["--audio", "SILENT"], "silent"),
    (["--audio", "WAV", "--infer_frames", 18], "multiple of 4"),
    (["--audio", "WAV", "--infer_frames", 48], "shorter than one clip"),
    (["--audio", "WAV", "--image", "BADIMG"], "cannot read image"),
    ([], "needs the driving audio"),
])
def test_cli_s2v_bad_input(s2v_ckpt, tiny_dir, tmp_path, extra, message):
    import wave

    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 32000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    subst = {"MISSING": tmp_path / "missing.wav", "EMPTY": tmp_path / "empty.wav", "SILENT": silent,
             "WAV": tiny_dir / "inputs" / "test.wav", "BADIMG": tmp_path / "bad.png"}
    out = tmp_path / "out" / "never.mp4"
    r = _cli(*_base(s2v_ckpt, tiny_dir, out), *[subst.get(a, a) for a in extra], timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not out.parent.exists()
