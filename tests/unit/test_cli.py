"""`python -m wan_core` as a user runs it: bad inputs give one clear `error:` line and exit code 2
(no traceback) before any weight is loaded; the demo writes an H.264 mp4 that reads back.

The checkpoint is our own tiny T2V-A14B (`wan_core.tinyckpt`), so these tests need no ../shared.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")   # CPU: these tests never need a GPU
    return subprocess.run([sys.executable, "-m", "wan_core", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=env)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, f"exit code {proc.returncode}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from wan_core.tinyckpt import write_tiny_t2v

    return write_tiny_t2v(tmp_path_factory.mktemp("ckpt") / "tiny-t2v")


def copy_ckpt(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def gen(ckpt: Path, *extra: str) -> list[str]:
    return ["generate", "--task", "t2v-A14B", "--ckpt_dir", str(ckpt), "--device", "cpu",
            "--size", "64*48", "--frame_num", "5", "--sample_steps", "2", *extra]


def test_missing_ckpt_dir(tmp_path):
    missing = tmp_path / "nope"
    assert_user_error(run_cli(*gen(missing)), str(missing), "does not exist")


def test_incomplete_ckpt_dir(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path / "ck")
    shutil.rmtree(broken / "low_noise_model")
    assert_user_error(run_cli(*gen(broken)), "low_noise_model")


def test_missing_vae_file(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path / "ck")
    (broken / "Wan2.1_VAE.pth").unlink()
    assert_user_error(run_cli(*gen(broken)), "Wan2.1_VAE.pth")


def test_truncated_shard(ckpt, tmp_path):
    broken = copy_ckpt(ckpt, tmp_path / "ck")
    shard = broken / "high_noise_model" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_user_error(run_cli(*gen(broken)), shard.name)


def test_frame_num_not_4n_plus_1(ckpt):
    assert_user_error(run_cli(*gen(ckpt)[:-4], "--frame_num", "6", "--sample_steps", "2"),
                      "frame_num=6", "5 or 9")


def test_invalid_size_lists_nearest(ckpt):
    args = gen(ckpt)
    args[args.index("--size") + 1] = "100*50"
    assert_user_error(run_cli(*args), "100*50", "nearest valid: width 96 or 112, height 48 or 64")


def test_unreadable_image(ckpt, tmp_path):
    bad = tmp_path / "picture.png"
    bad.write_text("this is not a picture")
    args = ["generate", "--task", "i2v-A14B", "--ckpt_dir", str(ckpt), "--device", "cpu", "--image", str(bad)]
    assert_user_error(run_cli(*args), str(bad))


def test_missing_image_file(ckpt, tmp_path):
    args = ["generate", "--task", "i2v-A14B", "--ckpt_dir", str(ckpt), "--device", "cpu",
            "--image", str(tmp_path / "absent.jpg")]
    assert_user_error(run_cli(*args), "absent.jpg", "does not exist")


@pytest.mark.parametrize("flag,value,needle", [
    ("--sample_guide_scale", "60", "guide scale 60.0"),
    ("--sample_guide_scale", "3,x", "'3,x'"),
    ("--sample_steps", "0", "sample_steps=0"),
    ("--sample_shift", "-1", "sample_shift=-1.0"),
])
def test_sampling_values_out_of_range(ckpt, flag, value, needle):
    args = [a for a in gen(ckpt)]
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert_user_error(run_cli(*args), needle)


def test_wrong_task_for_folder(ckpt):
    args = gen(ckpt)
    args[args.index("--task") + 1] = "ti2v-5B"
    assert_user_error(run_cli(*args), "t2v-A14B checkpoint, not ti2v-5B")


def test_bad_flag_is_one_line():
    proc = run_cli("generate", "--ckpt_dir", "x", "--no_such_flag")
    assert_user_error(proc, "--no_such_flag")


def test_ulysses_must_divide_heads(ckpt):
    # The tiny DiT has 2 heads: ulysses_size 3 cannot split them (checked before any worker starts).
    assert_user_error(run_cli(*gen(ckpt), "--num_gpus", "3", "--ulysses_size", "3"),
                      "ulysses_size=3", "2 attention heads")


@pytest.mark.slow
def test_generate_then_demo_mp4(ckpt, tmp_path):
    """A real run through the CLI (T2V on the tiny checkpoint) and the demo command."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    from wan_core.demo import DEMO_FRAMES, DEMO_SIZE
    from wan_core.io.video import read_video

    out, lat, demo = tmp_path / "t2v.mp4", tmp_path / "t2v.safetensors", tmp_path / "demo.mp4"
    # Two independent processes (own outputs, the demo its own checkpoint folder): run side by side,
    # so their start-up and single-threaded stretches overlap.
    with ThreadPoolExecutor(2) as pool:
        gen_run = pool.submit(run_cli, *gen(ckpt), "--base_seed", "3", "--save_file", str(out),
                              "--save_latent", str(lat))
        demo_run = pool.submit(run_cli, "demo", "--out", str(demo), "--ckpt_dir", str(tmp_path / "demo-ckpt"),
                               "--device", "cpu")
        proc, demo_proc = gen_run.result(), demo_run.result()

    assert proc.returncode == 0, proc.stderr
    video = read_video(out)
    assert video.frames.shape == (5, 48, 64, 3) and video.codec == "h264" and video.fps == 16
    assert load_file(str(lat))["latent"].shape == (16, 2, 6, 8)

    assert demo_proc.returncode == 0, demo_proc.stderr
    # the demo's size is not an official one: one warning, before the first progress bar (not in
    # the middle of it), and the output says the video is noise from random weights
    err = demo_proc.stderr
    assert err.count("is not one of the official sizes") == 1, err
    assert err.index("is not one of the official sizes") < err.index("load:"), err
    assert "random weights, so the video is coloured noise" in err
    video = read_video(demo)
    assert video.codec == "h264"
    assert video.frames.shape == (DEMO_FRAMES, DEMO_SIZE[1], DEMO_SIZE[0], 3)
    assert video.frames.std() > 1.0        # not a blank video


def test_doctor_reports_this_machine():
    """`doctor` exits 0 and states what this process can see (CUDA hidden by run_cli), each fact
    checked against the same query made here."""
    import av
    import torch
    import torch.distributed as dist

    from wan_core.models.attention import _load_flash

    proc = run_cli("doctor", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = {line.strip().split(": ", 1)[0]: line.strip().split(": ", 1)[1]
             for line in proc.stdout.splitlines() if ": " in line and not line.strip().startswith("warning")}
    assert lines["torch"] == torch.__version__
    assert lines["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert lines["CUDA available"] == "no" and lines["CUDA_VISIBLE_DEVICES"] == "''"
    for name in ("flash3", "flash2", "flash4"):
        assert lines[f"attention {name}"].startswith("imports") == (_load_flash(name) is not None)
    assert lines["attention auto"] == "picks sdpa on cpu"     # no CUDA: SDPA whatever is installed
    assert lines["NCCL (GPU ranks)"].startswith("yes" if dist.is_nccl_available() else "no")
    assert lines["gloo (CPU ranks)"] == ("yes" if dist.is_gloo_available() else "no")
    assert lines["PyAV"] == av.__version__
    # The total of /dev/shm is fixed; the free part moves with other processes, so only the total
    # is compared exactly (as printed, 2 decimals of GiB).
    total = shutil.disk_usage("/dev/shm").total / 1024 ** 3
    assert lines["/dev/shm"].endswith(f"of {total:.2f} GiB")
    assert proc.stdout.rstrip().endswith("warning(s)")


def test_lora_and_switch_step_flags(tmp_path):
    """--lora / --lora_high_noise / --lora_low_noise FILE[:STRENGTH] (repeatable) and --switch_step
    reach the request; a strength that is not a number or a missing file is one error line."""
    from wan_core.cli import build_parser, build_request
    from wan_core.config import LoraSpec, LoraTarget, Task
    from wan_core.errors import ConfigError

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b""), b.write_bytes(b"")
    args = build_parser().parse_args(
        ["generate", "--task", "t2v-A14B", "--lora", f"{a}:0.5", "--lora", str(b),
         "--lora_high_noise", f"{b}:-1", "--lora_low_noise", str(a), "--sample_solver", "euler",
         "--switch_step", "2"])
    req = build_request(args, Task.T2V_A14B)
    assert req.loras == (LoraSpec(str(a), 0.5), LoraSpec(str(b), 1.0),
                         LoraSpec(str(b), -1.0, LoraTarget.HIGH_NOISE), LoraSpec(str(a), 1.0, LoraTarget.LOW_NOISE))
    assert req.switch_step == 2 and req.solver.value == "euler"
    for bad, needle in ((f"{a}:strong", "strength 'strong' is not a number"),
                        (str(tmp_path / "gone.safetensors"), "gone.safetensors' does not exist")):
        args = build_parser().parse_args(["generate", "--task", "t2v-A14B", "--lora", bad])
        with pytest.raises(ConfigError, match=needle):
            build_request(args, Task.T2V_A14B)


def test_missing_lora_file_is_one_line(ckpt, tmp_path):
    assert_user_error(run_cli(*gen(ckpt, "--lora", str(tmp_path / "nope.safetensors:0.8"))),
                      "nope.safetensors", "does not exist")


# ------------------------------------------------------------------------ first contact (issue 11)
def test_argparse_errors_name_the_command_as_typed():
    assert_user_error(run_cli("generate", "--task", "t2v-A14B", "--no_such_flag"),
                      "--no_such_flag (see `python -m wan_core generate --help`)")
    line = assert_user_error(run_cli("nosuch"))
    assert line.endswith("(see `python -m wan_core --help`)"), line


@pytest.mark.parametrize("what", ["file", "folder"])
def test_dangling_link_is_a_broken_link_not_missing(ckpt, tmp_path, what):
    """A checkpoint folder copied with `cp -a` keeps relative links that now point nowhere; `ls`
    shows the file, so the message names the link and its target instead of 'missing'."""
    broken = copy_ckpt(ckpt, tmp_path / "ck")
    if what == "file":
        link = broken / "Wan2.1_VAE.pth"
        link.unlink()
        link.symlink_to("../blobs/0a1b2c")
        line = assert_user_error(run_cli(*gen(broken)))
        assert f"{link} is a broken link -> ../blobs/0a1b2c" in line, line
        assert str(tmp_path / "blobs" / "0a1b2c") in line and "VAE.pth is missing" not in line, line
    else:   # a linked expert folder: its files are reached through the dangling link
        link = broken / "low_noise_model"
        shutil.rmtree(link)
        link.symlink_to(tmp_path / "gone")
        line = assert_user_error(run_cli(*gen(broken)), "low_noise_model")
        assert f"{link} is a broken link -> {tmp_path / 'gone'}" in line, line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mistake", ["flag", "folder"])
def test_torchrun_user_error_is_said_once(tmp_path, mistake):
    """Under torchrun every rank runs the CLI: a mistake found before the group is joined is
    printed by rank 0 only, which exits 2 (the others wait to be stopped by torchrun, so rank 0 is
    never stopped before it printed), and torchrun's own failure report (which it always prints
    for a non-zero exit, with its ChildFailedError) shows our message as the root cause."""
    args = ["generate", "--task", "t2v-A14B", "--device", "cpu"]
    args += ["--no_such_flag"] if mistake == "flag" else ["--ckpt_dir", str(tmp_path / "nope")]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "wan_core", *args],
                          capture_output=True, text=True, timeout=110, cwd=str(tmp_path), env=env)
    out = proc.stdout + proc.stderr
    ours = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, out
    needle = "--no_such_flag" if mistake == "flag" else "does not exist"
    assert needle in ours[0], out
    assert proc.returncode != 0
    root_cause = out[out.index("Root Cause"):]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause, out
    assert f"traceback : {ours[0]}" in root_cause, out
    assert "wan_core/" not in "".join(line for line in out.splitlines() if line.lstrip().startswith("File "))
